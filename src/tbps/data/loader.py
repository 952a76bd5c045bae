"""Torch datasets, a resumable sampler and collation.

Every random choice in the data pipeline (sample order, augmentation, token masking) is drawn from
a generator seeded by (run seed, epoch, sample index or step). A resumed run therefore sees the
same batches as an uninterrupted one, whatever the number of worker processes.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
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


class TrainItem(NamedTuple):
    """What `ShardedBatchSampler` yields per sample: which one, in which epoch, and whether this
    process loads its image (False for the other ranks' samples: only their captions are used)."""

    index: int
    epoch: int
    load_image: bool = True


class ImageCache:
    """Decoded, resized training images held in memory (`data.cache_images: true`).

    Built once in the main process before the loader's workers start, so they share its pages
    (fork, copy-on-write, never written). Holds uint8 [N, H, W, 3]: 147 kB per 384x128 image,
    5 GB for CUHK-PEDES' 34k training images. The transforms see the same pixels as without the
    cache (the bicubic resize to the model size is what the transform would do first).
    """

    def __init__(self, paths: Sequence[str], height: int, width: int, threads: int | None = None) -> None:
        unique = list(dict.fromkeys(str(p) for p in paths))
        self.row = {p: i for i, p in enumerate(unique)}
        self.size = (int(height), int(width))
        self.array = np.empty((len(unique), height, width, 3), dtype=np.uint8)

        def fill(i: int) -> None:
            img = load_image(unique[i])
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BICUBIC)
            self.array[i] = np.asarray(img, dtype=np.uint8)

        threads = threads or max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding and resizing
            list(pool.map(fill, range(len(unique))))

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def get(self, path: str) -> Image.Image:
        return Image.fromarray(self.array[self.row[str(path)]], "RGB")


class TrainPairs(TorchDataset):
    """(image, caption) training pairs; augmentation seeded per (seed, epoch, index).

    Indexed by an int (epoch from `set_epoch`) or by a `TrainItem`, which carries its epoch: with
    persistent workers the dataset copy in each worker never sees `set_epoch`.
    """

    def __init__(self, samples: Sequence[TrainSample], transform: Callable, seed: int,
                 image_cache: ImageCache | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.image_cache = image_cache

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int | TrainItem) -> dict[str, Any]:
        epoch, with_image = self.epoch, True
        if isinstance(index, tuple):
            index, epoch, with_image = index
        s = self.samples[index]
        image = None
        if with_image:
            raw = self.image_cache.get(s.image_path) if self.image_cache is not None else load_image(s.image_path)
            image = self.transform(raw, generator_for(self.seed, epoch, index))
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


def batch_share(batch_size: int, rank: int = 0, world_size: int = 1) -> slice:
    """The rows of every global batch of `batch_size` that process `rank` of `world_size` trains on:
    N contiguous shards of B / N in rank order. The one place the share is computed; the sampler
    marks these rows, the collate records them (`shard` offset and size) and `methods.base.shard_of`
    hands them to the losses."""
    if batch_size % world_size:
        raise ValueError(f"train.batch_size={batch_size} must be divisible by the {world_size} processes "
                         "(it is the global batch, split evenly across them)")
    size = batch_size // world_size
    return slice(rank * size, (rank + 1) * size)


class ShardedBatchSampler(Sampler[list[TrainItem]]):
    """Global batches of B from an `EpochSampler`, each split into N contiguous shards of B / N.

    Every rank iterates the same global batches (same seed, same epoch order); rank r loads the
    images of rows r*B/N .. (r+1)*B/N - 1 and only the captions of the others, so the collate can
    tokenize and mask the whole global batch exactly as one process would. With N = 1 this is
    plain batching with `drop_last`. `set_epoch(epoch, start_batch)` resumes mid-epoch.
    """

    def __init__(self, sampler: EpochSampler, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.rows = batch_share(batch_size, rank, world_size)
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.local_size = self.rows.stop - self.rows.start
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch
        self.sampler.set_epoch(epoch)

    def batches_per_epoch(self) -> int:
        self.sampler.set_epoch(self.epoch)
        return len(self.sampler.order()) // self.batch_size

    def __iter__(self) -> Iterator[list[TrainItem]]:
        self.sampler.set_epoch(self.epoch)
        order, B = self.sampler.order(), self.batch_size
        lo, hi = self.rows.start, self.rows.stop
        for k in range(self.start_batch, len(order) // B):
            yield [TrainItem(i, self.epoch, lo <= j < hi) for j, i in enumerate(order[k * B:(k + 1) * B])]

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch


def tokens_to_dict(batch, trim: bool = True) -> dict[str, torch.Tensor]:
    """Token tensors of a TokenBatch, cut to the longest caption in the batch (dynamic padding).

    Padding sits after every real token, CLIP's text tower is causal and BERT masks padded keys,
    so the text towers' outputs at real tokens do not depend on trimming. A module that attends
    over the padding unmasked does: IRRA's MLM branch under `method.mlm_padding=none` (the default
    `mask` masks it; `context`, the official setting, pads again to the context length). Trimming
    saves most of the text cost, since real captions are far shorter than the maximum length.
    """
    ids, mask = batch.ids, batch.attention_mask
    if trim:
        length = max(1, int(mask.sum(1).max()))
        ids, mask = ids[:, :length], mask[:, :length]
    return {"ids": ids, "attention_mask": mask, "eot_index": batch.eot_index}


class TrainCollate:
    """Stacks images and tokenizes captions once per batch (fast tokenizers batch well).

    Items without an image belong to other processes' shards of the global batch: the batch then
    holds this process's rows only, plus "shard": {"offset", "size", "global": {"tokens", "pids",
    extras...}} with the integer inputs of the whole global batch (see `methods.base.shard_of`).
    Tokens are trimmed to the global batch's longest caption, as with one process.
    """

    def __init__(self, tokenizer: Any, max_len: int, extras: Callable[[list[str], Any], dict] | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.extras = extras

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        captions = [it["caption"] for it in items]
        tb = self.tokenizer.encode(captions, self.max_len)
        tokens = tokens_to_dict(tb)
        pids = torch.tensor([it["pid"] for it in items], dtype=torch.long)
        extras = self.extras(captions, tb) if self.extras is not None else {}
        local = [j for j, it in enumerate(items) if it["image"] is not None]
        if len(local) == len(items):
            return {
                "images": torch.stack([it["image"] for it in items]),
                "tokens": tokens,
                "pids": pids,
                "image_index": torch.tensor([it["image_index"] for it in items], dtype=torch.long),
                "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
                "captions": captions,
                **extras,
            }
        lo, hi = local[0], local[-1] + 1
        if hi - lo != len(local):
            raise ValueError("a process's rows of the global batch must be contiguous")
        mine = items[lo:hi]
        return {
            "images": torch.stack([it["image"] for it in mine]),
            "tokens": {k: v[lo:hi] for k, v in tokens.items()},
            "pids": pids[lo:hi],
            "image_index": torch.tensor([it["image_index"] for it in mine], dtype=torch.long),
            "index": torch.tensor([it["index"] for it in mine], dtype=torch.long),
            "captions": captions[lo:hi],
            **{k: v[lo:hi] for k, v in extras.items()},
            "shard": {"offset": lo, "size": hi - lo, "global": {"tokens": tokens, "pids": pids, **extras}},
        }


def warm_collate_extras(extras: Callable[[list[str], Any], dict] | None, captions: Sequence[str], tokenizer: Any,
                        max_len: int, chunk: int = 1024) -> int:
    """Run a method's `collate_extras` once over every distinct caption of the dataset.

    The attribute detector behind the extras caches its result per caption
    (`tbps.data.attributes`), so this computes every caption's attribute spans once, in the main
    process, before the loader's workers fork and inherit the cache. Returns the caption count.
    """
    if extras is None:
        return 0
    unique = list(dict.fromkeys(captions))
    for i in range(0, len(unique), chunk):
        part = unique[i:i + chunk]
        extras(part, tokenizer.encode(part, max_len))
    return len(unique)
