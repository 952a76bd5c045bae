"""Torch datasets, a resumable sampler and collation.

Every random choice in the data pipeline (sample order, augmentation, token masking) is drawn from
a generator seeded by (run seed, epoch, sample index or step). A resumed run therefore sees the
same batches as an uninterrupted one, whatever the number of worker processes.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from .records import TrainSample
from .transforms import load_image


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix-style), so nearby inputs give unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) + 0x9E3779B97F4A7C15 + ((x << 6) & 0xFFFFFFFFFFFFFFFF) + (x >> 2))) & 0xFFFFFFFFFFFFFFFF
        x = (x * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def generator_for(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*parts))


class TrainPairs(TorchDataset):
    """(image, caption) training pairs; augmentation seeded per (seed, epoch, index)."""

    def __init__(self, samples: Sequence[TrainSample], transform: Callable, seed: int) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        image = self.transform(load_image(s.image_path), generator_for(self.seed, self.epoch, index))
        return {"image": image, "caption": s.caption, "pid": s.pid, "image_index": s.image_index, "index": index}


class ImageList(TorchDataset):
    """Images for evaluation or indexing, deterministic transform."""

    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_image(self.paths[index]), None)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can start part-way through (for resuming mid-epoch).

    With `ids_per_batch`-style identity balancing (`instances` > 1), each batch holds P identities
    with `instances` samples each, so intra-modal positives exist (UCA's point contrast).
    """

    def __init__(self, num_samples: int, seed: int, pids: Sequence[int] | None = None, instances: int = 1) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.pids = list(pids) if pids is not None else None
        self.instances = instances
        self.epoch = 0
        self.start = 0
        if instances > 1 and self.pids is None:
            raise ValueError("identity-balanced sampling needs the samples' pids")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        g = generator_for(self.seed, self.epoch, 7919)
        if self.instances <= 1:
            return torch.randperm(self.num_samples, generator=g).tolist()
        return self._balanced_order(g)

    def _balanced_order(self, g: torch.Generator) -> list[int]:
        by_pid: dict[int, list[int]] = {}
        for i, p in enumerate(self.pids):
            by_pid.setdefault(p, []).append(i)
        chunks: list[list[int]] = []
        for p in sorted(by_pid):
            idx = by_pid[p]
            perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
            if len(perm) < self.instances:  # too few samples: repeat some so the group is full
                extra = torch.randint(len(idx), (self.instances - len(perm),), generator=g).tolist()
                perm += [idx[j] for j in extra]
            for k in range(0, len(perm) - self.instances + 1, self.instances):
                chunks.append(perm[k:k + self.instances])
        return [i for c in (chunks[j] for j in torch.randperm(len(chunks), generator=g).tolist()) for i in c]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start:])

    def __len__(self) -> int:
        return len(self.order()) - self.start


def tokens_to_dict(batch, trim: bool = True) -> dict[str, torch.Tensor]:
    """Token tensors of a TokenBatch, cut to the longest caption in the batch (dynamic padding).

    Trimming never changes a result: padding sits after every real token, CLIP's text tower is
    causal and BERT masks padded keys. It saves most of the text cost, since real captions are
    far shorter than the maximum length.
    """
    ids, mask = batch.ids, batch.attention_mask
    if trim:
        length = max(1, int(mask.sum(1).max()))
        ids, mask = ids[:, :length], mask[:, :length]
    return {"ids": ids, "attention_mask": mask, "eot_index": batch.eot_index}


class TrainCollate:
    """Stacks images and tokenizes captions once per batch (fast tokenizers batch well)."""

    def __init__(self, tokenizer: Any, max_len: int, extras: Callable[[list[str], Any], dict] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.extras = extras

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        captions = [it["caption"] for it in items]
        tb = self.tokenizer.encode(captions, self.max_len)
        out = {
            "images": torch.stack([it["image"] for it in items]),
            "tokens": tokens_to_dict(tb),
            "pids": torch.tensor([it["pid"] for it in items], dtype=torch.long),
            "image_index": torch.tensor([it["image_index"] for it in items], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
            "captions": captions,
        }
        if self.extras is not None:
            out.update(self.extras(captions, tb))
        return out
