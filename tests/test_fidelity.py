"""Fidelity to the official IRRA and CADA code: one hand-built case per switch (README, "Fidelity to
the official code"), each checking that the official setting does what the official code does."""
from __future__ import annotations

import torch
from PIL import Image

from tbps.data.transforms import CLIP_MEAN, build_transform


def test_erased_box_holds_the_clip_mean_in_normalised_space() -> None:
    """Official: torchvision RandomErasing(value=mean) after Normalize, so the box holds the mean's numbers."""
    img = Image.new("RGB", (64, 128), (10, 200, 30))
    base = build_transform(128, 64, train=False)(img)
    t = build_transform(128, 64, train=True, flip=False, random_crop=False, erasing=1.0)  # default fill
    x = t(img, torch.Generator().manual_seed(3))
    box = (x != base).any(0)
    assert box.any()
    for c in range(3):
        assert torch.allclose(x[c][box], torch.full_like(x[c][box], CLIP_MEAN[c]))
