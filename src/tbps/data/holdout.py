"""A validation split held out of train, for datasets that ship none (ICFG-PEDES).

Without a validation split nothing selects the checkpoint (the trainer keeps the last epoch) and
nothing fits what is fitted on validation (UCA's match-probability calibration, whose ECE then
means nothing). `data.val_from_train: f` moves a fraction f of the train identities, with all
their images and captions, into a validation split: its identities never appear in training.
The choice depends only on the identities, never on the run's seed, so every seed and every
`tbps eval` of a run sees the same split.
"""
from __future__ import annotations

import dataclasses

import torch

from .records import Dataset, EvalSplit, TrainSample

HOLDOUT_SEED = 20250612  # fixed: the split is part of the data, not of a run


def hold_out_validation(dataset: Dataset, fraction: float) -> Dataset:
    """`dataset` with round(fraction * ids) train identities (at least 1) moved into `val`.

    Refused for a dataset that has a validation split, or when it would leave no training identity.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_from_train={fraction!r}: use a fraction in (0, 1), or 0 to keep train whole")
    if dataset.val is not None:
        raise ValueError(f"data.val_from_train={fraction}: dataset {dataset.name} ({dataset.root}) has its own "
                         f"validation split; hold-out is for datasets without one (ICFG-PEDES)")
    ids = sorted({s.pid for s in dataset.train})
    n_val = max(1, round(fraction * len(ids)))
    if n_val >= len(ids):
        raise ValueError(f"data.val_from_train={fraction}: {len(ids)} train identities leave none to train on")
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(HOLDOUT_SEED)).tolist()
    held = {ids[i] for i in order[:n_val]}
    val = EvalSplit(image_paths=[], image_pids=[], captions=[], caption_pids=[], caption_image_index=[])
    gallery: dict[str, int] = {}
    train: list[TrainSample] = []
    remap: dict[int, int] = {}
    images: dict[int, int] = {}
    for s in dataset.train:
        if s.pid in held:
            if s.image_path not in gallery:
                gallery[s.image_path] = len(val.image_paths)
                val.image_paths.append(s.image_path)
                val.image_pids.append(s.pid)
            val.captions.append(s.caption)
            val.caption_pids.append(s.pid)
            val.caption_image_index.append(gallery[s.image_path])
        else:  # remaining ids and images renumbered 0.. in order of first appearance, as the readers do
            train.append(dataclasses.replace(s, pid=remap.setdefault(s.pid, len(remap)),
                                             image_index=images.setdefault(s.image_index, len(images))))
    note = (f"validation split held out of train (data.val_from_train={fraction}): {n_val} of {len(ids)} "
            f"identities, {len(val.image_paths)} images, {len(val.captions)} captions")
    return dataclasses.replace(dataset, train=train, num_train_ids=len(remap), val=val,
                               warnings=[*dataset.warnings, note])
