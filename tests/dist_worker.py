"""One training step of a tiny method, for comparing N processes with one (tests/test_distributed.py).

`one_step` runs in the test process (one process, the whole global batch) and, through
`python tests/dist_worker.py OUT METHOD...` with torchrun's environment variables, in each of N
gloo processes (a DDP-wrapped method, 1/N of the global batch each). Both use the engine's own
loader (`build_train_loader`: sharded sampler and collate) and `init_distributed`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from tbps.engine.experiment import load_experiment_config
from tbps.data.loader import generator_for
from tbps.engine.build import build_model, build_tokenizer, build_transforms, image_size_of, load_data
from tbps.engine.distributed import cleanup_distributed, init_distributed, reduce_mean
from tbps.engine.trainer import autocast, build_train_loader, check_amp, set_grad_checkpointing
from tbps.utils import seed_everything

TINY = ("backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, text_heads: 2, "
        "text_layers: 1, embed_dim: 32}")
COMMON = [TINY, "data.image_size=[64, 32]", "data.tokenizer_vocab_size=300", "train.batch_size=8", "train.amp=null",
          "data.num_workers=0", "data.max_text_len=48"]
PER_METHOD = {
    "irra": ["method.cross_layers=1", "method.learnable_tau=true"],
    "cada": ["method.decoder_layers=1"],
    "uca": ["method.cross_layers=1", "method.num_samples=3", "method.loss_weights.id=1.0"],
}


def config(method: str, data: str | Path, extra: list[str] = ()) -> dict:
    return load_experiment_config(f"{method}_tiny_scratch", COMMON + PER_METHOD[method] + [f"data.root={data}", *extra])


def one_step(method_name: str, data: str | Path, run_dir: str | Path, rank: int = 0, world: int = 1,
             extra: list[str] = ()):
    """-> (loss parts averaged over processes, {parameter: gradient}) after one forward/backward.

    `extra`: config overrides; train.grad_checkpointing and train.amp are honoured."""
    cfg = config(method_name, data, extra)
    seed_everything(0)
    dataset = load_data(cfg)
    tokenizer = build_tokenizer(cfg, dataset, Path(run_dir))  # saved by the single-process run first
    method = build_model(cfg, tokenizer, dataset.num_train_ids)
    if cfg["train"].get("grad_checkpointing"):
        assert set_grad_checkpointing(method, True) > 0
    model = method
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(method)
    train_tf, _ = build_transforms(cfg, image_size_of(method))
    loader, batches, _ = build_train_loader(cfg, dataset, tokenizer, method, train_tf, torch.device("cpu"), rank,
                                            world, log=lambda *a: None)
    batches.set_epoch(0)
    batch = next(iter(loader))
    batch["mask_generator"] = generator_for(0, 0, 104729)
    model.train()
    with autocast(torch.device("cpu"), check_amp(cfg["train"].get("amp"), torch.device("cpu"))):
        losses = model(batch)
    losses["loss"].backward()
    parts = reduce_mean(losses)
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in method.named_parameters()}
    return parts, grads


def main(argv: list[str]) -> None:
    out, data, runs, methods = Path(argv[0]), argv[1], Path(argv[2]), argv[3:]
    info = init_distributed("gloo", "cpu")
    results = {m: one_step(m, data, runs / m, info.rank, info.world_size) for m in methods}
    torch.save(results, out / f"rank{info.rank}.pt")
    cleanup_distributed(info)


if __name__ == "__main__":
    main(sys.argv[1:])
