"""Training throughput and peak memory per method at the papers' model sizes, against a limit.

For each method (IRRA and UCA: CLIP ViT-B/16 at 384x128, text length 77; CADA: BLIP base at
224x224, text length 73, with the decoder and ViT gradient checkpointing of `cada_cuhk.yaml`) and
each precision (fp32, bf16 autocast) it measures, in a fresh process:

* pipeline: the trainer's real path: the engine's training loader (sampler, image decoding and
  augmentation, tokenization, attribute extras, worker processes, pinned memory), host-to-device
  copies, masking, forward, backward and optimizer step (`engine.trainer.optimisation_step`);
* limit: the same optimisation steps on the same batches, already on the device, i.e. the bare
  forward/backward (+ optimizer step) of the same model on the same device, with nothing else.

pipeline / limit is how close the data pipeline and the loop come to the model's own speed.
Peak memory is the CUDA allocator's peak on a GPU and the process's peak RSS on a CPU.
Weights are random (speed does not depend on them); images come from the embedded benchmark.

    python benchmarks/train_speed.py --device cuda                  # papers' batches: 64 / 120 / 64
    python benchmarks/train_speed.py --device cpu --threads 1       # batch 2, 2 timed steps

Writes benchmarks/results/train_speed_<device>.{md,json} with the machine description.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from _ablation import repo_relative
from _child import child_main, run_child

PAPER = {  # config, global batch of the paper / official code
    "irra": ("irra_cuhk", 64),
    "cada": ("cada_cuhk", 120),
    "uca": ("uca_cuhk", 64),
}
ROOT = Path(__file__).resolve().parent.parent


class _VocabAs:
    """A tokenizer that reports another vocabulary size, so the model gets the paper's vocabulary
    head (BERT's 30,524 with [DEC]/[ENC]) while captions use a tokenizer trained offline."""

    def __init__(self, tok, vocab_size: int) -> None:
        self._tok, self.vocab_size = tok, vocab_size

    def __getattr__(self, name):
        if name.startswith("__") or name == "_tok":  # unpickling in a worker: no recursion
            raise AttributeError(name)
        return getattr(self._tok, name)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _child(spec: dict) -> dict:
    """One (method, precision) measurement; runs in its own process."""
    import torch

    from tbps.engine.experiment import load_experiment_config
    from tbps.data.loader import generator_for
    from tbps.engine.build import build_model, build_tokenizer, build_transforms, image_size_of, load_data
    from tbps.engine.trainer import (_to_device, build_optimizer, build_train_loader, check_amp,
                                     optimisation_step)
    from tbps.utils import seed_everything

    method_name, amp, batch = spec["method"], spec["amp"], spec["batch"]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config_name = PAPER[method_name][0]
    overrides = [f"data.dataset=synth", f"data.root={spec['data']}", "backbone.pretrained=null",
                 f"train.batch_size={batch}", f"train.amp={amp or 'null'}", f"train.device={spec['device']}",
                 f"data.num_workers={spec['workers']}"]
    if method_name == "cada":  # no bert-base-uncased vocab offline: a trained tokenizer, BERT's head size
        overrides += ["data.tokenizer=trained", "data.tokenizer_vocab_size=4000"]
    cfg = load_experiment_config(config_name, overrides)
    seed_everything(0, deterministic=False)
    device = torch.device(spec["device"])
    amp = check_amp(amp, device)
    dataset = load_data(cfg)
    tokenizer = build_tokenizer(cfg, dataset, None)
    if method_name == "cada":
        tokenizer = _VocabAs(tokenizer, 30524)
    method = build_model(cfg, tokenizer, dataset.num_train_ids).to(device)
    if cfg["train"].get("grad_checkpointing"):
        from tbps.engine.trainer import set_grad_checkpointing

        set_grad_checkpointing(method, True)
    method.train()
    n_params = sum(p.numel() for p in method.parameters())
    train_tf, _ = build_transforms(cfg, image_size_of(method))
    loader, batches, _ = build_train_loader(cfg, dataset, tokenizer, method, train_tf, device, log=lambda *a: None)
    optimizer = build_optimizer(method, cfg["train"])
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    warmup, steps = spec["warmup"], spec["steps"]

    def step(b, i):
        b["mask_generator"] = generator_for(0, i, 104729)
        optimisation_step(method, b, optimizer, scaler, device, amp, cfg["train"].get("grad_clip"), i)

    # The limit repeats the pipeline's own batches, already on the device (captions of different
    # lengths cost different times, so one fixed batch would not do). Without loader workers (CPU)
    # each timed pipeline step (loading and everything after it) is followed by the timed limit
    # step on the same batch, so a change of machine load affects both alike. With workers (GPU)
    # the pipeline runs its steps back to back and is measured as sustained throughput (the
    # workers must keep up, as in training), then the limit runs over the same batches.
    def forever():
        epoch = 0
        while True:
            batches.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = forever()

    def timed(fn) -> "torch.Tensor":
        """-> [wall seconds, CPU seconds of this process (all its threads)]."""
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        return torch.tensor([time.perf_counter() - t0, time.process_time() - c0], dtype=torch.float64)

    for i in range(warmup):
        b = _to_device(next(it), device)
        step(b, i)
        step(dict(b), i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seen: list[dict] = []  # the pipeline's batches as the loader gave them (host memory)

    def pipeline_step(i: int) -> None:
        seen.append(next(it))
        step(_to_device(seen[-1], device), warmup + i)

    if spec["workers"] == 0:
        pipeline_s, limit_s = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        for i in range(steps):
            pipeline_s += timed(lambda: pipeline_step(i))
            resident = _to_device(seen[i], device)
            limit_s += timed(lambda: step(resident, warmup + i))
        peak_cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    else:
        pipeline_s = timed(lambda: [pipeline_step(i) for i in range(steps)])
        peak_cuda = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        resident = [_to_device(b, device) for b in seen]
        limit_s = timed(lambda: [step(resident[i], warmup + i) for i in range(steps)])
    bc = method.backbone.cfg
    return {
        "method": method_name, "config": config_name, "amp": amp or "fp32", "batch": batch, "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "warmup": warmup, "device": str(device), "workers": spec["workers"],
        "backbone": cfg["backbone"]["name"], "image_size": list(bc.image_size),
        "max_text_len": int(cfg["data"]["max_text_len"]), "vocab_size": bc.vocab_size,
        "grad_checkpointing": bool(bc.grad_checkpointing or cfg["train"].get("grad_checkpointing")),
        "parameters_m": round(n_params / 1e6, 1),
        "pipeline_pairs_per_s": batch * steps / float(pipeline_s[0]),
        "limit_pairs_per_s": batch * steps / float(limit_s[0]),
        "pipeline_s_per_step": float(pipeline_s[0]) / steps, "limit_s_per_step": float(limit_s[0]) / steps,
        "pipeline_over_limit": float(limit_s[0] / pipeline_s[0]),
        # on a shared CPU the process's CPU time is the steadier measure (other jobs stretch wall time)
        "pipeline_cpu_s_per_step": float(pipeline_s[1]) / steps, "limit_cpu_s_per_step": float(limit_s[1]) / steps,
        "pipeline_over_limit_cpu_time": float(limit_s[1] / pipeline_s[1]),
        "peak_cuda_gib": peak_cuda / 2**30 if peak_cuda is not None else None,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def _markdown(rows: list[dict], info: dict, args: argparse.Namespace) -> str:
    on_gpu = args.device.startswith("cuda")
    gpu = info.get("gpu")
    where = f"{gpu}" if gpu and on_gpu else f"{info['cpu']} ({info['cpu_usable']} usable cores)"
    threads = {r.get("torch_threads") for r in rows if "error" not in r}
    lines = [f"# Training speed: {args.device}", "",
             f"Machine: {where}; torch {info['torch']}; Python {info['python']}; {time.strftime('%Y-%m-%d')}; "
             f"load average before the run {args.load_before:.1f}, after {os.getloadavg()[0]:.1f}"
             + (f"; torch threads {', '.join(map(str, sorted(threads)))}" if not on_gpu else "") + ".",
             f"{args.steps} timed steps of each kind ({'alternating' if args.workers_used == 0 else 'pipeline first'}) "
             f"after {args.warmup} warm-up steps of each, {args.workers_used} loader workers, random weights, images "
             "from the embedded benchmark. *pipeline*: the trainer's loader + step; *limit*: the same steps on the "
             "same batches, already on the device (the bare forward/backward/optimizer step of the same model).", ""]
    if on_gpu:
        lines += ["| method | model | batch | precision | pipeline pairs/s | limit pairs/s | pipeline / limit | "
                  "s/step | peak GPU memory (GiB) |", "|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["On a shared CPU the wall-clock rates move with other jobs; the CPU-time rates (pairs per second "
                  "of this process's CPU time, one thread) do not, and are the ones to compare.", "",
                  "| method | model | batch | precision | pipeline pairs/s (wall) | limit pairs/s (wall) | "
                  "pipeline pairs/CPU-s | limit pairs/CPU-s | pipeline / limit (CPU time) | peak RSS (GiB) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | | {r['batch']} | {r['amp']} | error: {r['error']} |")
            continue
        model = (f"{r['backbone']} {r['image_size'][0]}x{r['image_size'][1]}, text {r['max_text_len']}, "
                 f"{r['parameters_m']}M params{', grad ckpt' if r['grad_checkpointing'] else ''}")
        head = f"| {r['method']} | {model} | {r['batch']} | {r['amp']} | "
        if on_gpu:
            lines.append(head + f"{r['pipeline_pairs_per_s']:.3g} | {r['limit_pairs_per_s']:.3g} | "
                         f"{100 * r['pipeline_over_limit']:.0f}% | {r['pipeline_s_per_step']:.3g} | "
                         f"{r['peak_cuda_gib']:.2f} |")
        else:
            b = r["batch"]
            lines.append(head + f"{r['pipeline_pairs_per_s']:.3g} | {r['limit_pairs_per_s']:.3g} | "
                         f"{b / r['pipeline_cpu_s_per_step']:.3g} | {b / r['limit_cpu_s_per_step']:.3g} | "
                         f"{100 * r['pipeline_over_limit_cpu_time']:.0f}% | {r['peak_rss_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--methods", nargs="+", default=list(PAPER), choices=list(PAPER))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the paper's on CUDA, 2 on a CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on a CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each kind first (default 3 on CUDA, 1 on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default 8 on CUDA, 0 on a CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a shared CPU, 1 thread makes the CPU-time "
                        "columns trustworthy: several threads spin-wait on each other when other jobs run")
    p.add_argument("--data", default=str(ROOT / "data" / "synth-small"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(_child, args.child)
    on_gpu = args.device.startswith("cuda")
    args.steps = args.steps or (20 if on_gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    workers = args.workers if args.workers is not None else (8 if on_gpu else 0)
    args.workers_used = workers
    if not Path(args.data).is_dir():
        raise SystemExit(f"no benchmark data at {args.data}: run `tbps synth --out {args.data}` first")
    from tbps.utils import atomic_write_json, atomic_write_text, machine_info

    args.load_before = os.getloadavg()[0]
    rows = []
    for m in args.methods:
        for amp in args.precisions:
            batch = args.batch or (PAPER[m][1] if on_gpu else 2)
            spec = {"method": m, "amp": None if amp == "fp32" else amp, "batch": batch, "steps": args.steps,
                    "warmup": args.warmup, "device": args.device, "workers": workers, "data": args.data,
                    "threads": args.threads}
            t0 = time.time()
            row, stderr = run_child(__file__, spec, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
            if row is None:
                err = (stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"method": m, "amp": amp, "batch": batch, "error": err[:200]})
                print(f"{m} {amp}: failed: {err}", file=sys.stderr)
                continue
            rows.append(row)
            print(f"{m:5s} {amp:5s} batch {batch}: pipeline {row['pipeline_pairs_per_s']:.3g} pairs/s, "
                  f"limit {row['limit_pairs_per_s']:.3g} pairs/s ({100 * row['pipeline_over_limit']:.0f}%, "
                  f"CPU time {100 * row['pipeline_over_limit_cpu_time']:.0f}%), "
                  f"peak {row['peak_cuda_gib'] or row['peak_rss_gib']:.2f} GiB  [{time.time() - t0:.0f} s]")
    info = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"train_speed_{'cuda' if on_gpu else 'cpu'}"
    atomic_write_json(out / f"{name}.json", {"machine": info, "args": repo_relative(vars(args)), "results": rows})
    text = _markdown(rows, info, args)
    atomic_write_text(out / f"{name}.md", text)
    print(text)
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
