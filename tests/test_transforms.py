"""Tests for tbps.data.transforms: shapes, determinism per generator, flip, normalisation, erasing."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tbps.data.transforms import (
    BLIP_MEAN,
    BLIP_STD,
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
    load_image,
    pil_to_tensor,
)

H, W = 48, 16


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def asymmetric_image(h: int = H, w: int = W) -> Image.Image:
    """Left half red, right half blue, plus a bright vertical stripe near the left edge."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2, 0] = 200
    a[:, w // 2:, 2] = 200
    a[:, 1:3, :] = 255
    return Image.fromarray(a)


def random_image(h: int = 60, w: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def unnormalise(x: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    return x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def test_constants() -> None:
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    assert (BLIP_MEAN, BLIP_STD) == (CLIP_MEAN, CLIP_STD)


def test_shapes_and_dtype() -> None:
    img = random_image(100, 37)
    for train in (False, True):
        x = build_transform(H, W, train)(img, gen(0))
        assert x.shape == (3, H, W) and x.dtype == torch.float32
    # grayscale / RGBA inputs are converted
    assert build_transform(H, W, False)(img.convert("L")).shape == (3, H, W)
    assert build_transform(H, W, True)(img.convert("RGBA"), gen(1)).shape == (3, H, W)


def test_eval_is_deterministic_resize_and_normalise() -> None:
    img = random_image(90, 40)
    t = build_transform(H, W, train=False)
    a, b = t(img, gen(0)), t(img, gen(123))
    assert torch.equal(a, b) and torch.equal(a, t(img))
    expected = pil_to_tensor(img.resize((W, H), Image.Resampling.BICUBIC))
    assert torch.allclose(unnormalise(a), expected, atol=1e-5)


def test_normalisation_values() -> None:
    img = Image.new("RGB", (W, H), (255, 0, 128))
    x = build_transform(H, W, train=False)(img)
    want = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
            (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((H, W), want[c]), atol=1e-5)
    y = build_transform(H, W, train=False, mean=IMAGENET_MEAN, std=IMAGENET_STD)(img)
    assert abs(y[0, 0, 0].item() - (1.0 - 0.485) / 0.229) < 1e-5


def test_train_same_seed_same_output_different_seeds_differ() -> None:
    img = random_image()
    t = build_transform(H, W, train=True)
    assert torch.equal(t(img, gen(7)), t(img, gen(7)))
    outs = [t(img, gen(s)) for s in range(8)]
    assert len({o.numpy().tobytes() for o in outs}) == 8


def test_different_seeds_give_different_crops() -> None:
    img = random_image()
    t = build_transform(H, W, train=True, flip=False, erasing=0.0)
    crops = {t(img, gen(s)).numpy().tobytes() for s in range(10)}
    assert len(crops) > 5
    # the crop is a shifted window of the zero-padded image: some outputs show the black border
    black = torch.tensor([(0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1)
    bordered = 0
    for s in range(10):
        x = t(img, gen(s))
        edges = [x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]]
        bordered += any(torch.allclose(e, black.expand_as(e), atol=1e-5) for e in edges)
    assert bordered > 0


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    img = random_image(H, W, seed=4)
    pad = 3
    t = build_transform(H, W, train=True, flip=False, pad=pad, erasing=0.0)
    padded = torch.nn.functional.pad(pil_to_tensor(img), (pad, pad, pad, pad))
    windows = {(top, left): padded[:, top:top + H, left:left + W]
               for top in range(2 * pad + 1) for left in range(2 * pad + 1)}
    seen = set()
    for s in range(30):
        x = unnormalise(t(img, gen(s)))
        match = [k for k, wdw in windows.items() if torch.allclose(x, wdw, atol=1e-5)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 10


def test_flip_actually_flips() -> None:
    img = asymmetric_image()
    plain = build_transform(H, W, train=False)(img)
    t = build_transform(H, W, train=True, flip=True, random_crop=False, erasing=0.0)
    outs = [t(img, gen(s)) for s in range(20)]
    flipped = [o for o in outs if torch.equal(o, plain.flip(-1))]
    unflipped = [o for o in outs if torch.equal(o, plain)]
    assert flipped and unflipped and len(flipped) + len(unflipped) == 20
    # the flipped image has its red half on the right
    f = unnormalise(flipped[0])
    assert f[0, :, -4:].mean() > 0.7 and f[0, :, :4].mean() < 0.1
    no_flip = build_transform(H, W, train=True, flip=False, random_crop=False, erasing=0.0)
    assert all(torch.equal(no_flip(img, gen(s)), plain) for s in range(10))


def test_erasing_changes_one_region() -> None:
    img = Image.new("RGB", (W * 4, H * 4), (10, 200, 30))
    base = build_transform(H * 4, W * 4, train=False)(img)
    for fill in ("random", "zeros", (5.0, 5.0, 5.0)):
        t = build_transform(H * 4, W * 4, train=True, flip=False, random_crop=False, erasing=1.0,
                            erase_fill=fill)
        x = t(img, gen(3))
        changed = (x != base).any(0)
        assert changed.any()
        rows, cols = changed.nonzero(as_tuple=True)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        frac = float((r1 - r0) * (c1 - c0)) / (H * W * 16)
        assert 0.02 * 0.9 <= frac <= 0.4 * 1.1  # one rectangle within the erasing scale
        if fill == "zeros":
            assert (x[:, r0:r1, c0:c1] == 0).all()
        elif fill != "random":
            assert (x[:, r0:r1, c0:c1] == 5.0).all()
    never = build_transform(H, W, train=True, flip=False, random_crop=False, erasing=0.0)
    small = img.resize((W, H))
    assert torch.equal(never(small, gen(0)), build_transform(H, W, train=False)(small))


def test_erasing_probability() -> None:
    img = Image.new("RGB", (W, H), (100, 100, 100))
    base = build_transform(H, W, train=False)(img)
    t = build_transform(H, W, train=True, flip=False, random_crop=False, erasing=0.5)
    erased = sum(not torch.equal(t(img, gen(s)), base) for s in range(200))
    assert 60 < erased < 140


def test_transform_pickles_and_validates() -> None:
    t = build_transform(H, W, train=True)
    clone = pickle.loads(pickle.dumps(t))
    img = random_image()
    assert torch.equal(clone(img, gen(5)), t(img, gen(5)))
    assert "train" in repr(t)
    with pytest.raises(ValueError):
        build_transform(0, W, True)
    with pytest.raises(ValueError):
        build_transform(H, W, True, erasing=1.5)
    with pytest.raises(ValueError):
        build_transform(H, W, True, erase_fill="average")
    with pytest.raises(TypeError):
        t(np.zeros((H, W, 3), dtype=np.uint8), gen(0))  # type: ignore[arg-type]


def test_load_image(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    random_image(20, 10).convert("L").save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (10, 20)
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(missing)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(OSError, match="bad.jpg"):
        load_image(bad)
    truncated = tmp_path / "trunc.jpg"
    random_image(64, 64).save(tmp_path / "full.jpg", quality=90)
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    with pytest.raises(OSError, match="trunc.jpg"):
        load_image(truncated)
