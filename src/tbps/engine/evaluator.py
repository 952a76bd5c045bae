"""Encode a split's gallery and queries once, score them per task, report CMC / mAP / mINP."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.loader import ImageList, tokens_to_dict
from ..data.records import EvalSplit
from ..evaluation import effective_rank, rank_metrics
from ..methods import Method
from .distributed import all_gather_cat, get_rank, get_world_size


@torch.no_grad()
def encode_split(method: Method, split: EvalSplit, tokenizer: Any, transform: Callable, max_len: int,
                 device: torch.device, batch_size: int = 128, num_workers: int = 0,
                 progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """-> (text features, image features), each a dict of tensors stacked over the split.

    Under multi-process training each process encodes a contiguous shard of the gallery and of
    the queries, and every process gets the gathered features of the whole split.
    """
    method.eval()
    rank, world = get_rank(), get_world_size()
    img_lo, img_hi = _shard_range(len(split.image_paths), rank, world)
    q_lo, q_hi = _shard_range(split.num_queries, rank, world)
    loader = DataLoader(ImageList(split.image_paths[img_lo:img_hi], transform), batch_size=batch_size,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    image_parts: list[dict[str, torch.Tensor]] = []
    for images in tqdm(loader, desc="gallery", disable=not progress, leave=False):
        image_parts.append({k: v.cpu() for k, v in method.encode_images(images.to(device, non_blocking=True)).items()})
    text_parts: list[dict[str, torch.Tensor]] = []
    for i in tqdm(range(q_lo, q_hi, batch_size), desc="queries", disable=not progress, leave=False):
        tb = tokens_to_dict(tokenizer.encode(split.captions[i:min(i + batch_size, q_hi)], max_len))
        text_parts.append({k: v.cpu() for k, v in method.encode_texts({k: v.to(device) for k, v in tb.items()}).items()})
    text, image = _stack(text_parts), _stack(image_parts)
    if world > 1:
        text, image = _gather_features(text, device), _gather_features(image, device)
    return text, image


def _shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    return n * rank // world, n * (rank + 1) // world


def _gather_features(feats: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Concatenate every process's features in rank order (on `device` for NCCL, back on the CPU)."""
    return {k: all_gather_cat(v.to(device)).cpu() for k, v in sorted(feats.items())}


def _stack(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


@torch.no_grad()
def evaluate(method: Method, split: EvalSplit, tokenizer: Any, transform: Callable, max_len: int,
             device: torch.device, batch_size: int = 128, num_workers: int = 0, progress: bool = True,
             score_kwargs: dict[str, Any] | None = None, validation: bool = False,
             report_dir: str | Path | None = None, embedding_rank: bool = False) -> dict[str, Any]:
    """-> {task: {"R1", "R5", "R10", "mAP", "mINP", ...}} for every task the method scores.

    With `validation`, the method's `on_validation` hook sees the features first. What the
    method's `extra_report` hook returns (unless None) is returned under the key "extra". With
    `embedding_rank`, the effective rank of the global image and text embeddings ("emb") is returned
    under "embedding": training logs it at every validation, where a collapse shows before Rank-1 does.
    """
    text_feats, image_feats = encode_split(method, split, tokenizer, transform, max_len, device, batch_size,
                                           num_workers, progress)
    if validation:
        method.on_validation(text_feats, image_feats, split)
    scores = method.score(text_feats, image_feats, split=split, **(score_kwargs or {}))
    qp = torch.tensor(split.caption_pids)
    gp = torch.tensor(split.image_pids)
    results: dict[str, Any] = {task: rank_metrics(sim, qp, gp) for task, sim in scores.items()}
    extra = method.extra_report(text_feats, image_feats, split, scores, report_dir)
    if extra is not None:
        results["extra"] = extra
    if embedding_rank and "emb" in image_feats and "emb" in text_feats and min(len(split.image_paths), split.num_queries) > 1:
        results["embedding"] = {"image_rank": effective_rank(image_feats["emb"]),
                                "text_rank": effective_rank(text_feats["emb"])}
    return results
