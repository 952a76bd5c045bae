"""`tbps explain`: load a run, ask its method for the association maps of a caption on an image
(`Method.association_maps`, computed in `tbps.methods.maps`), and draw them: overlays as PNGs (PIL
only) with an index.json and an index.html.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .methods.maps import Associations


@torch.no_grad()
def association_maps(method: Any, image: Image.Image, text: str, transform: Any, max_len: int,
                     layers: str | int = "all") -> Associations:
    """The method's maps for the caption, every word and every attribute phrase of `text` on `image`
    (a method that declares none refuses with a ValueError)."""
    device = next(method.parameters()).device
    return method.association_maps(transform(image.convert("RGB"), None)[None].to(device), text, max_len, layers)


# ----------------------------------------------------------------------------- rendering

def _heat_colours(x: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8 with a blue-cyan-yellow-red ramp (jet-like)."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def render_overlay(image: Image.Image, weights: np.ndarray, size: tuple[int, int], alpha: float = 0.5) -> Image.Image:
    """Blend a min-max scaled heat map (bilinear-upsampled from the patch grid) over the image.

    `size` is (width, height) of the output.
    """
    w = weights.astype(np.float32)
    w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
    heat = Image.fromarray((w * 255).astype(np.uint8), mode="L").resize(size, Image.BILINEAR)
    coloured = Image.fromarray(_heat_colours(np.asarray(heat, dtype=np.float32) / 255.0), mode="RGB")
    return Image.blend(image.convert("RGB").resize(size, Image.BICUBIC), coloured, alpha)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def write_explanation(assoc: Associations, image: Image.Image, out_dir: str | Path, model_size: tuple[int, int],
                      min_height: int = 256) -> Path:
    """Write image.png, one overlay PNG per map, index.json and index.html into `out_dir`.

    `model_size` is the model's (height, width); overlays are that shape, scaled up by an integer
    factor until at least `min_height` pixels high, so patch cells stay square and visible.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = model_size
    scale = max(1, -(-min_height // h))
    size = (w * scale, h * scale)
    image.convert("RGB").resize(size, Image.BICUBIC).save(out / "image.png")
    counters: dict[str, int] = {}
    for m in assoc.maps:
        i = counters[m.kind] = counters.get(m.kind, -1) + 1
        m.file = f"{m.kind}_{i:02d}_{_slug(m.label)}.png"
        render_overlay(image, m.weights, size).save(out / m.file)
    index = {
        "text": assoc.text, "grid": list(assoc.grid), "layers": assoc.layers,
        "match_prob": assoc.match_prob, "cosine": assoc.cosine, "image": "image.png",
        "maps": [{k: v for k, v in asdict(m).items() if k != "weights"}
                 | {"peak": [int(x) for x in np.unravel_index(int(np.argmax(m.weights)), m.weights.shape)]}
                 for m in assoc.maps],
    }
    (out / "index.json").write_text(json.dumps(index, indent=2))
    (out / "index.html").write_text(_html(assoc, size))
    return out


def _html(assoc: Associations, size: tuple[int, int]) -> str:
    def card(file: str, caption: str) -> str:
        return (f'<figure><img src="{html.escape(file)}" width="{size[0]}" height="{size[1]}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    sections = []
    for kind, title in (("caption", "Caption ([ENC])"), ("phrase", "Attribute phrases"), ("word", "Words")):
        cards = [card(m.file, m.label) for m in assoc.by_kind(kind) if m.file]
        if cards:
            sections.append(f"<h2>{title}</h2><div class=row>{card('image.png', 'image') if kind == 'caption' else ''}"
                            f"{''.join(cards)}</div>")
    return ("<!doctype html><meta charset=utf-8><title>tbps association maps</title>"
            "<style>body{font-family:sans-serif}.row{display:flex;flex-wrap:wrap;gap:8px}"
            "figure{margin:0;text-align:center;font-size:12px;max-width:160px}</style>"
            f"<h1>{html.escape(assoc.text)}</h1>"
            f"<p>patch grid {assoc.grid[0]}x{assoc.grid[1]}, cross-attention averaged over heads and "
            f"{html.escape(assoc.layers)} layer(s); match probability {assoc.match_prob:.3f}, "
            f"cosine {assoc.cosine:.3f}</p>" + "".join(sections))


def explain_run(run: str | Path, image_path: str | Path, text: str, out_dir: str | Path, layers: str | int = "all",
                checkpoint: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Load a trained run, compute the association maps of `text` on the image, write them to `out_dir`."""
    from .data.transforms import load_image
    from .engine.runs import load_run

    loaded = load_run(run, checkpoint, device)
    image = load_image(str(image_path))
    assoc = association_maps(loaded.method, image, text, loaded.test_transform(), loaded.max_len, layers)
    model_size = tuple(loaded.method.backbone.cfg.image_size)
    folder = write_explanation(assoc, image, out_dir, model_size)
    return {"out": str(folder), "index": str(folder / "index.html"), "grid": list(assoc.grid),
            "match_prob": assoc.match_prob, "cosine": assoc.cosine,
            "maps": [{"kind": m.kind, "label": m.label, "file": m.file} for m in assoc.maps]}
