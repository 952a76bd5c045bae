"""The training loop: one function, `train`, from a resolved config to a run folder.

One process (CPU or one GPU) or several under torchrun (`engine.distributed`): each process
takes B / N of every global batch of B, losses over the batch use features gathered from all
of them, DDP averages the gradients, rank 0 writes the logs and checkpoints.

Run folder layout:
  config.yaml            the resolved config
  tokenizer/             the tokenizer (trained on the training captions for tiny models)
  checkpoints/last/      saved every `train.ckpt_every_steps` steps and at each epoch end
  checkpoints/best/      best validation Rank-1 (never test)
  log.jsonl, tb/         JSON-lines and TensorBoard logs
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import save_config
from ..data.loader import (EpochSampler, ImageCache, ShardedBatchSampler, TrainCollate, TrainPairs, generator_for,
                           warm_collate_extras)
from ..utils import JsonlLogger, seed_everything
from .build import build_model, build_tokenizer, build_transforms, image_size_of, load_data, resolve_device
from .checkpoint import CheckpointError, load_model_weights, load_trainer_state, resolve_checkpoint, save_checkpoint
from .config_types import TRAIN_KEYS, check_config_types
from .distributed import DistInfo, all_true, barrier, cleanup_distributed, init_distributed, reduce_mean
from .evaluator import evaluate


def build_optimizer(method: torch.nn.Module, tcfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam/AdamW over parameter groups given by `train.param_groups` (see `parameter_settings`);
    epsilon `train.eps` (the paper configs set the official code's 1e-3, the value its fp16 weights need)."""
    lr = float(tcfg["lr"])
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    params_by_name = dict(method.named_parameters())
    for name, (mult, wd) in parameter_settings(method, tcfg).items():
        groups.setdefault((lr * mult, wd), []).append(params_by_name[name])
    params = [{"params": ps, "lr": glr, "weight_decay": gwd} for (glr, gwd), ps in sorted(groups.items())]
    name = tcfg["optimizer"].lower()
    betas = tuple(tcfg["betas"])
    eps = float(tcfg["eps"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown train.optimizer {name!r}; use adam or adamw")


_RULE_KEYS = {"match", "max_ndim", "lr_mult", "weight_decay"}


def parameter_settings(method: torch.nn.Module, tcfg: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """(learning-rate factor, weight decay) of every trainable parameter, by name.

    `train.param_groups: null` is tbps's rule: parameters outside the backbone learn
    `new_module_lr_mult` times faster; 1-d parameters (biases, norm gains, class embedding) get no
    weight decay. Otherwise it is an ordered list of rules, each with an optional `match` (regular
    expression searched in the parameter name), an optional `max_ndim` (only parameters with at most
    that many dimensions) and the `lr_mult` and/or `weight_decay` it sets; every parameter starts at
    (1, train.weight_decay) and each rule that applies overrides what it names, later rules winning.
    The paper configs (e.g. `*_cuhk.yaml`) hold the official code's rule (solver/build.py) in tbps's names.
    """
    wd = float(tcfg["weight_decay"])
    trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    rules = tcfg["param_groups"]
    if rules is None:
        mult = float(tcfg["new_module_lr_mult"])
        new = method.new_parameter_names()
        return {n: (mult if n in new else 1.0, 0.0 if p.ndim < 2 else wd) for n, p in trainable}
    if not isinstance(rules, list):
        raise ValueError(f"train.param_groups must be null or a list of rules, got {rules!r}")
    compiled = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, dict) or not rule or set(rule) - _RULE_KEYS:
            raise ValueError(f"train.param_groups[{i}]: {rule!r} is not a rule; use keys {sorted(_RULE_KEYS)}")
        try:
            pattern = re.compile(str(rule.get("match", "")))
        except re.error as err:
            raise ValueError(f"train.param_groups[{i}].match: {rule['match']!r} is not a regular expression: "
                             f"{err}") from None
        compiled.append((pattern, rule))
    out = {}
    for n, p in trainable:
        mult, decay = 1.0, wd
        for pattern, rule in compiled:
            if pattern.search(n) and p.ndim <= int(rule.get("max_ndim", p.ndim)):
                mult = float(rule.get("lr_mult", mult))
                decay = float(rule.get("weight_decay", decay))
        out[n] = (mult, decay)
    return out


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the base rate, per step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------- precision and memory

def check_amp(amp: str | None, device: torch.device) -> str | None:
    """Validate `train.amp`: None/fp32, bf16 (CPU or GPU) or fp16 (GPU only, with a gradient scaler)."""
    if amp in (None, "none", "fp32"):
        return None
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"unknown train.amp {amp!r}; use null (fp32), bf16 or fp16")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"train.amp=fp16 needs a CUDA device (it relies on a gradient scaler); the run is on "
                         f"{device.type}: use train.amp=bf16 there")
    return amp


def autocast(device: torch.device, amp: str | None):
    """Mixed precision for the encoders. The methods' losses on similarities and distributions switch
    it off again locally and run in fp32."""
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def set_grad_checkpointing(method: torch.nn.Module, enabled: bool = True) -> int:
    """Recompute transformer blocks in the backward pass instead of storing their activations.

    Every transformer stack (`models.layers.Transformer`, `models.text.BertTextModel`) honours its
    `grad_checkpointing` flag while training; returns how many stacks were switched."""
    n = 0
    for m in method.modules():
        if hasattr(m, "grad_checkpointing") and isinstance(getattr(m, "grad_checkpointing"), bool):
            m.grad_checkpointing = enabled
            n += 1
    return n


def compile_transformers(method: torch.nn.Module, **options: Any) -> int:
    """`torch.compile` each transformer stack in place (`nn.Module.compile`: parameter names and
    checkpoints are unchanged). The losses stay eager: they hold Python-side masking and sampling,
    which would only break graphs. Returns how many modules were compiled."""
    targets = [m for m in method.modules() if hasattr(m, "grad_checkpointing")]
    outer = [m for m in targets if not any(m is not o and any(c is m for c in o.modules()) for o in targets)]
    for m in outer:
        m.compile(**options)
    return len(outer)


# ----------------------------------------------------------------------------- data

def build_train_loader(cfg: dict[str, Any], dataset: Any, tokenizer: Any, method: torch.nn.Module,
                       transform: Any, device: torch.device, rank: int = 0, world_size: int = 1,
                       log: Any = print) -> tuple[DataLoader, ShardedBatchSampler, TrainPairs]:
    """The training loader of one process: global batches of `train.batch_size`, this rank's shard.

    data.num_workers worker processes (persistent across epochs unless data.persistent_workers is
    false), pinned memory on CUDA (data.pin_memory: auto | true | false), the method's attribute
    spans computed once per dataset before the workers start, and with data.cache_images the
    decoded, resized images held in memory.
    """
    tcfg, dcfg = cfg["train"], cfg["data"]
    seed = int(cfg["seed"])
    max_len = int(dcfg["max_text_len"])
    extras = method.collate_extras if method.capabilities().caption_extras else None
    if extras is not None and dcfg["cache_attributes"]:
        t0 = time.time()
        n = warm_collate_extras(extras, [s.caption for s in dataset.train], tokenizer, max_len)
        log(f"attribute spans of {n} captions computed once ({time.time() - t0:.1f} s)")
    cache = None
    if dcfg["cache_images"]:
        t0 = time.time()
        h, w = transform.height, transform.width
        cache = ImageCache([s.image_path for s in dataset.train], h, w, threads=dcfg["cache_threads"])
        log(f"image cache: {len(cache.row)} images at {h}x{w}, {cache.nbytes / 2**20:.0f} MiB "
            f"({time.time() - t0:.1f} s)")
    pairs = TrainPairs(dataset.train, transform, seed, image_cache=cache)
    sampler = EpochSampler(len(pairs), seed, [s.pid for s in dataset.train], int(dcfg["instances_per_id"]))
    batches = ShardedBatchSampler(sampler, int(tcfg["batch_size"]), rank, world_size)
    workers = int(dcfg["num_workers"])
    pin = dcfg["pin_memory"]
    pin = device.type == "cuda" if pin in (None, "auto") else bool(pin) and device.type == "cuda"
    extra_args: dict[str, Any] = {}
    if workers > 0:
        extra_args["persistent_workers"] = bool(dcfg["persistent_workers"])
        extra_args["prefetch_factor"] = int(dcfg["prefetch_factor"])
    loader = DataLoader(pairs, batch_sampler=batches, num_workers=workers,
                        collate_fn=TrainCollate(tokenizer, max_len, extras), pin_memory=pin, **extra_args)
    return loader, batches, pairs


# ----------------------------------------------------------------------------- one step

def optimisation_step(model: torch.nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, device: torch.device, amp: str | None,
                      grad_clip: float | None = None, step: int = 0) -> dict[str, torch.Tensor]:
    """Forward under autocast, backward (scaled for fp16), optional clipping, optimizer step.

    `model` is the method or its DDP wrapper. Returns this process's loss parts (tensors)."""
    with autocast(device, amp):
        losses = model(batch)
    loss = losses["loss"]
    if not all_true(bool(torch.isfinite(loss.detach())), device):
        raise FloatingPointError(f"loss is not finite at step {step}: "
                                 f"{ {k: float(v) for k, v in losses.items()} }")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return losses


def train_device(tcfg: dict[str, Any], dist_info: DistInfo) -> torch.device:
    device = resolve_device(tcfg["device"])
    if dist_info.enabled and device.type == "cuda":
        return torch.device("cuda", dist_info.local_rank)  # one GPU per process
    return device


# ----------------------------------------------------------------------------- the loop

def train(cfg: dict[str, Any], run_dir: str | Path, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train `cfg` into `run_dir`; with `resume`, continue from `run_dir/checkpoints/last`.

    Under torchrun every process calls this; rank 0 alone writes logs and checkpoints.
    """
    check_config_types(cfg, TRAIN_KEYS)  # before any data is read or anything is written
    tcfg = cfg["train"]
    dist_info = init_distributed(tcfg["dist_backend"], tcfg["device"])
    summary = _train(cfg, Path(run_dir), resume, progress, dist_info)
    cleanup_distributed(dist_info)  # not reached after an error: torchrun stops the other ranks
    return summary


def _train(cfg: dict[str, Any], run_dir: Path, resume: bool, progress: bool, dist_info: DistInfo) -> dict[str, Any]:
    tcfg, dcfg = cfg["train"], cfg["data"]
    main = dist_info.is_main
    log = print if main else (lambda *a, **k: None)
    progress = progress and main
    seed = int(cfg["seed"])
    last_dir = run_dir / "checkpoints" / "last"
    resume_from = resolve_checkpoint(last_dir) if resume else None
    if resume and resume_from is None:
        log(f"no checkpoint under {last_dir}; starting from scratch")
    if not resume and resolve_checkpoint(last_dir) is not None:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    barrier()  # every rank has checked the folder before rank 0 writes into it
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    device = train_device(tcfg, dist_info)
    amp = check_amp(tcfg["amp"], device)

    dataset = load_data(cfg)
    if main:  # rank 0 trains and saves the tokenizer; the others load it
        tokenizer = build_tokenizer(cfg, dataset, run_dir)
    barrier()
    if not main:
        tokenizer = build_tokenizer(cfg, dataset, run_dir)
    method = build_model(cfg, tokenizer, dataset.num_train_ids, load_pretrained=resume_from is None).to(device)
    if tcfg["grad_checkpointing"]:
        set_grad_checkpointing(method, True)
    if tcfg["compile"]:
        compile_transformers(method, **(tcfg["compile_options"] or {}))
    model: torch.nn.Module = method
    if dist_info.enabled:
        model = DistributedDataParallel(method, find_unused_parameters=bool(tcfg["find_unused_parameters"]))
    train_tf, test_tf = build_transforms(cfg, image_size_of(method))
    max_len = int(dcfg["max_text_len"])

    batch_size = int(tcfg["batch_size"])  # the global batch, split evenly over the processes
    loader, batches, pairs = build_train_loader(cfg, dataset, tokenizer, method, train_tf, device,
                                                dist_info.rank, dist_info.world_size, log)
    steps_per_epoch = batches.batches_per_epoch()
    if steps_per_epoch == 0:
        raise ValueError(f"train.batch_size={batch_size} exceeds the {len(pairs)} training pairs")
    epochs = int(tcfg["epochs"])
    total_steps = epochs * steps_per_epoch
    optimizer = build_optimizer(method, tcfg)
    scheduler = build_scheduler(optimizer, total_steps, int(float(tcfg["warmup_epochs"]) * steps_per_epoch),
                                float(tcfg["min_lr_ratio"]))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_r1": -1.0, "best_epoch": None}
    if resume_from is not None:  # everything is checked before the run folder is written to
        load_model_weights(resume_from, method, expect_method=method.name)
        ts = load_trainer_state(resume_from)
        try:
            optimizer.load_state_dict(ts["optimizer"])
            scheduler.load_state_dict(ts["scheduler"])
            scaler.load_state_dict(ts["scaler"])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"trainer state {resume_from / 'trainer_state.pt'} does not fit this config's "
                                  f"optimizer ({err}); resume with the run's own config.yaml") from err
        state.update(ts["counters"])
        torch.set_rng_state(ts["torch_rng"])
        log(f"resuming from {resume_from} at epoch {state['epoch']} step {state['step_in_epoch']}")
    if main:
        save_config(cfg, run_dir / "config.yaml")

    logger = JsonlLogger(run_dir / "log.jsonl") if main else None
    tb = _tensorboard(run_dir / "tb") if main else None
    if logger is not None and dist_info.enabled:
        logger.log({"step": state["global_step"], "world_size": dist_info.world_size, "backend": dist_info.backend,
                    "per_process_batch": batches.local_size})

    def checkpoint(name: str, meta_extra: dict[str, Any] | None = None) -> None:
        if not main:
            return
        trainer_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "counters": dict(state), "torch_rng": torch.get_rng_state()}
        meta = {"method": method.name, "backbone": cfg["backbone"]["name"], "num_classes": dataset.num_train_ids,
                **{k: state[k] for k in ("epoch", "step_in_epoch", "global_step", "best_r1")}, **(meta_extra or {})}
        save_checkpoint(run_dir / "checkpoints" / name, method, trainer_state if name == "last" else None, meta)

    ckpt_every = int(tcfg["ckpt_every_steps"] or 0)
    log_every = int(tcfg["log_every"])
    stop_after = tcfg["stop_after_steps"]  # simulates a killed run (tests, debugging)
    val_split = dataset.val
    val_metrics: dict[str, Any] | None = None
    grad_clip = tcfg["grad_clip"]
    start_time = time.time()
    pairs_seen, train_seconds = 0, 0.0  # throughput counts training steps only, not validation

    for epoch in range(state["epoch"], epochs):
        model.train()
        pairs.set_epoch(epoch)
        batches.set_epoch(epoch, start_batch=state["step_in_epoch"])
        bar = tqdm(loader, total=steps_per_epoch - state["step_in_epoch"], desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress, dynamic_ncols=True)
        window_t, window_n = time.time(), 0
        epoch_t = time.time()
        for batch in bar:
            batch = _to_device(batch, device)
            batch["mask_generator"] = generator_for(seed, state["global_step"], 104729)
            losses = optimisation_step(model, batch, optimizer, scaler, device, amp, grad_clip, state["global_step"])
            scheduler.step()
            state["global_step"] += 1
            state["step_in_epoch"] += 1
            pairs_seen += batch_size
            window_n += batch_size
            if state["global_step"] % log_every == 0 or state["step_in_epoch"] == steps_per_epoch:
                parts = reduce_mean(losses)  # the global batch's loss parts (mean over processes)
                rate = window_n / max(1e-9, time.time() - window_t)
                window_t, window_n = time.time(), 0
                if main:
                    record = {"step": state["global_step"], "epoch": epoch + state["step_in_epoch"] / steps_per_epoch,
                              "lr": scheduler.get_last_lr()[0], "pairs_per_s": rate, **parts}
                    logger.log(record)
                    if tb is not None:
                        for k, v in record.items():
                            if k not in ("step", "epoch"):
                                tb.add_scalar(f"train/{k}", v, state["global_step"])
                    bar.set_postfix(loss=f"{parts['loss']:.3f}", pairs_s=f"{rate:.0f}")
            if ckpt_every and state["global_step"] % ckpt_every == 0 and state["step_in_epoch"] < steps_per_epoch:
                checkpoint("last")
            if stop_after is not None and state["global_step"] >= int(stop_after):
                bar.close()
                train_seconds += time.time() - epoch_t
                barrier()
                return {"stopped_at_step": state["global_step"], "run_dir": str(run_dir),
                        "pairs_per_s": pairs_seen / max(train_seconds, 1e-9)}
        bar.close()
        train_seconds += time.time() - epoch_t
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        eval_every = int(tcfg["eval_every"])
        if val_split is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            # every process encodes a shard of the split; all of them score the gathered features
            val_metrics = evaluate(method, val_split, tokenizer, test_tf, max_len, device,
                                   int(cfg["eval"]["batch_size"]), progress=progress, validation=True,
                                   embedding_rank=True)
            val_metrics.pop("extra", None)
            embedding = val_metrics.pop("embedding", {})
            r1 = max(m["R1"] for m in val_metrics.values())
            if main:
                flat = {**_flat(val_metrics), **{f"embedding/{k}": v for k, v in embedding.items()}}
                logger.log({"step": state["global_step"], "epoch": epoch + 1, "split": "val", **flat})
                if tb is not None:
                    for k, v in flat.items():
                        tb.add_scalar(f"val/{k}", v, state["global_step"])
            if r1 > state["best_r1"]:
                state["best_r1"], state["best_epoch"] = r1, epoch + 1
                checkpoint("best", {"val": val_metrics})
            log(f"epoch {epoch + 1}: val " + ", ".join(f"{t} R1 {m['R1']:.2f} mAP {m['mAP']:.2f}"
                                                      for t, m in val_metrics.items())
                + (f", embedding rank image {embedding['image_rank']:.1f} / text {embedding['text_rank']:.1f}"
                   if embedding else ""))
        checkpoint("last")
    if val_split is None:  # no validation split (ICFG-PEDES): the last epoch is the selected model
        checkpoint("best", {"selection": "last epoch (no validation split)"})
    elapsed = time.time() - start_time
    summary = {"run_dir": str(run_dir), "epochs": epochs, "global_step": state["global_step"],
               "best_val_r1": state["best_r1"], "best_epoch": state["best_epoch"], "val": val_metrics,
               "seconds": elapsed, "train_seconds": train_seconds,
               "pairs_per_s": pairs_seen / max(train_seconds, 1e-9), "world_size": dist_info.world_size}
    if main:
        logger.log({"summary": summary})
        if tb is not None:
            tb.close()
    return summary


def _flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{task}/{k}": v for task, m in metrics.items() for k, v in m.items() if isinstance(v, (int, float))}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = _to_device(v, device)
        else:
            out[k] = v
    return out


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; stay usable if it is broken
        return None
    return SummaryWriter(str(path))
