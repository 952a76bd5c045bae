"""Multi-process training: the process group, rank helpers and the collectives the losses need.

`torchrun --nproc_per_node N -m tbps train ...` (or `tbps train --nproc N`) starts N processes
with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set; `init_distributed` reads
them. Without them (a plain `tbps train`) every helper here is a no-op for a single process, so
the same code runs on one GPU or a CPU without torchrun.

How the loss and the gradient stay equal to a single process with the same global batch:

* each rank holds B / N samples of the global batch of B (see `ShardedBatchSampler`);
* batch-level losses (SDM, NDF, distribution contrast, the hard-negative pool) are computed by
  every rank on the features of the whole global batch, gathered with `all_gather_with_grad`, so
  every rank's value is the single-process value;
* per-sample means (ID, MLM, ITM ...) are local sums divided by the global count and multiplied
  by N (`tbps.methods.losses.global_mean`), so the mean over ranks is the single-process mean;
* DDP averages the parameter gradients over ranks, and the backward of `all_gather_with_grad`
  sums the gradients every rank computed for this rank's slice. Together: the gradient of
  (1/N) sum_r L_r, which is the single-process gradient because (1/N) sum_r L_r equals its loss.

`tests/test_distributed.py` checks this numerically with 2 `gloo` processes on a CPU.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

# the collectives the losses use live below methods/ (methods must not import the engine)
from ..collectives import (all_gather_cat, all_gather_with_grad, all_reduce_sum, get_rank, get_world_size,
                           is_distributed)

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_gather_with_grad",
    "all_gather_cat",
    "all_reduce_sum",
    "reduce_mean",
    "all_true",
    "broadcast_object",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False  # this call created the process group (and should destroy it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(backend: str | None = None, device: str | None = "auto", timeout_minutes: float = 60) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    backend: None/"auto" picks `nccl` when the run uses CUDA, else `gloo`. The timeout is long
    because every rank waits while the others validate (a re-ranking validation pass takes minutes).
    """
    if dist.is_available() and dist.is_initialized():  # a caller (a test, a notebook) set it up
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                        dist.get_backend())
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device not in ("cpu",) and not str(device).startswith("cpu")
    if backend in (None, "auto"):
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world, local_rank, backend, initialized_here=True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@torch.no_grad()
def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean over ranks of scalar tensors (for logging: per-rank loss parts -> global loss parts)."""
    keys = sorted(values)
    if not keys:
        return {}
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    if is_distributed():
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))


@torch.no_grad()
def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when `flag` holds on every rank (so all ranks take the same branch)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def launch_processes(nproc: int, argv: list[str]) -> int:
    """`tbps train|index build --nproc N ...` = `torchrun --standalone --nproc_per_node N -m tbps ...`."""
    import subprocess

    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tbps", *rest]
    return subprocess.call(cmd)
