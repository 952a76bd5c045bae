"""Image transforms for person images, without torchvision, with explicit randomness.

The training pipeline follows IRRA / CADA: bicubic resize to a fixed size (ignoring aspect ratio),
random horizontal flip, zero padding + random crop back to size, conversion to [0, 1], mean/std
normalisation, random erasing whose box is filled with the normalisation mean (IRRA's and CADA's
`RandomErasing(value=mean)`, applied after normalisation). Every random draw comes from the `torch.Generator` passed with the
image, so a loader that seeds one generator per (seed, epoch, sample index) gets augmentations that
are identical across runs, worker counts and resumptions.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BLIP_MEAN",
    "BLIP_STD",
    "ImageTransform",
    "build_transform",
    "load_image",
    "pil_to_tensor",
]

# OpenAI CLIP preprocessing constants (also used by IRRA and UCA).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
# torchvision / ImageNet constants, for ImageNet-initialised backbones.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# BLIP (and hence CADA) normalises with CLIP's constants, not ImageNet's.
BLIP_MEAN: tuple[float, float, float] = CLIP_MEAN
BLIP_STD: tuple[float, float, float] = CLIP_STD


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, fully decoded now so that a corrupt file fails here, naming its path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [0, 1]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


def _rand(gen: torch.Generator | None) -> float:
    return float(torch.rand((), generator=gen))


def _randint(high: int, gen: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=gen))


class ImageTransform:
    """Callable `(PIL image, generator) -> normalised tensor [3, height, width]`.

    A class rather than a closure so that it pickles into DataLoader worker processes.
    `gen=None` draws from torch's global generator (fine for ad-hoc use, not reproducible per
    sample). Random erasing fills its rectangle with the normalisation mean's values per channel
    (`erase_fill="mean"`, the default: the official IRRA and CADA code pass `value=mean` to
    torchvision's RandomErasing after normalising, so the box holds those numbers in normalised
    space), standard-normal noise (`"random"`), zeros (`"zeros"`, the dataset mean after
    normalisation), or given per-channel values.
    """

    def __init__(self, height: int, width: int, train: bool, *, flip: bool = True, pad: int = 10,
                 random_crop: bool = True, erasing: float = 0.5,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 erase_scale: tuple[float, float] = (0.02, 0.4),
                 erase_ratio: tuple[float, float] = (0.3, 3.3),
                 erase_fill: str | Sequence[float] = "mean") -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        if not 0.0 <= erasing <= 1.0:
            raise ValueError(f"erasing is a probability, got {erasing}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values (std > 0), got {mean}, {std}")
        if isinstance(erase_fill, str) and erase_fill not in ("mean", "random", "zeros"):
            raise ValueError(f"erase_fill must be 'mean', 'random', 'zeros' or 3 numbers, got {erase_fill!r}")
        if not isinstance(erase_fill, str) and len(erase_fill) != 3:
            raise ValueError(f"erase_fill needs one value per channel, got {erase_fill}")
        self.height, self.width, self.train = int(height), int(width), bool(train)
        self.flip, self.pad, self.random_crop, self.erasing = flip, int(pad), random_crop, float(erasing)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.erase_scale, self.erase_ratio = erase_scale, erase_ratio
        if erase_fill == "mean":
            erase_fill = self.mean
        self.erase_fill = erase_fill if isinstance(erase_fill, str) else tuple(float(v) for v in erase_fill)
        std_a = np.asarray(self.std, dtype=np.float64).reshape(3, 1, 1)
        self._scale = (1.0 / (255.0 * std_a)).astype(np.float32)
        self._shift = (np.asarray(self.mean, dtype=np.float64).reshape(3, 1, 1) / std_a).astype(np.float32)

    def __call__(self, img: Image.Image, gen: torch.Generator | None = None) -> torch.Tensor:
        """Transform one image; in eval mode `gen` is ignored and the result is deterministic."""
        if not isinstance(img, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(img).__name__}")
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.Resampling.BICUBIC)
        # Geometry on the uint8 array (cheap, single-threaded), then one fused normalisation.
        a = np.asarray(img, dtype=np.uint8)  # [H, W, 3]
        if self.train:
            if self.flip and _rand(gen) < 0.5:
                a = a[:, ::-1]
            if self.random_crop and self.pad > 0:
                a = self._pad_crop(a, gen)
        x = torch.from_numpy(self._normalise(a))
        if self.train and self.erasing > 0 and _rand(gen) < self.erasing:
            self._erase(x, gen)
        return x

    def _normalise(self, a: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> float32 [3, H, W] equal to (a / 255 - mean) / std."""
        out = np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)
        out *= self._scale
        out -= self._shift
        return out

    def _pad_crop(self, a: np.ndarray, gen: torch.Generator | None) -> np.ndarray:
        """Zero-pad by `pad` on every side (black, before normalisation) and crop back at random.

        Equivalent to padding then cropping a window at (top, left) in [0, 2*pad]^2, without
        building the padded array: out[i, j] = a[i + top - pad, j + left - pad] or 0 outside.
        """
        p = self.pad
        dy = _randint(2 * p + 1, gen) - p
        dx = _randint(2 * p + 1, gen) - p
        h, w = a.shape[:2]
        out = np.zeros_like(a)
        ys, ye = max(0, dy), min(h, h + dy)
        xs, xe = max(0, dx), min(w, w + dx)
        if ys < ye and xs < xe:
            out[ys - dy:ye - dy, xs - dx:xe - dx] = a[ys:ye, xs:xe]
        return out

    def _erase(self, x: torch.Tensor, gen: torch.Generator | None) -> None:
        """Random erasing (Zhong et al.), in place: one rectangle of 2-40% of the area, aspect
        0.3-3.3. Up to 10 attempts to find a rectangle that fits; if none fits, nothing changes.
        """
        _, h, w = x.shape
        area = h * w
        lo, hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        for _ in range(10):
            target = area * (self.erase_scale[0] + _rand(gen) * (self.erase_scale[1] - self.erase_scale[0]))
            aspect = math.exp(lo + _rand(gen) * (hi - lo))
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if not (0 < eh < h and 0 < ew < w):
                continue
            top = _randint(h - eh + 1, gen)
            left = _randint(w - ew + 1, gen)
            if self.erase_fill == "random":
                x[:, top:top + eh, left:left + ew] = torch.randn((3, eh, ew), generator=gen)
            elif self.erase_fill == "zeros":
                x[:, top:top + eh, left:left + ew] = 0.0
            else:
                fill = torch.tensor(self.erase_fill, dtype=x.dtype).view(3, 1, 1)
                x[:, top:top + eh, left:left + ew] = fill
            return

    def __repr__(self) -> str:
        if not self.train:
            return f"ImageTransform(eval, {self.height}x{self.width}, mean={self.mean}, std={self.std})"
        return (f"ImageTransform(train, {self.height}x{self.width}, flip={self.flip}, "
                f"pad={self.pad if self.random_crop else 0}, erasing={self.erasing} "
                f"[{self.erase_fill}], mean={self.mean}, std={self.std})")


def build_transform(height: int, width: int, train: bool, *, flip: bool = True, pad: int = 10,
                    random_crop: bool = True, erasing: float = 0.5,
                    mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                    erase_fill: str | Sequence[float] = "mean") -> ImageTransform:
    """The person-image transform: train = resize, flip, pad+crop, normalise, erase; eval = resize,
    normalise. `pad` only acts together with `random_crop`; `erase_fill` as in `ImageTransform`."""
    return ImageTransform(height, width, train, flip=flip, pad=pad, random_crop=random_crop,
                          erasing=erasing, mean=mean, std=std, erase_fill=erase_fill)
