"""Association maps: which image patches each word and attribute phrase of a caption attends to.

The image-grounded text encoder (BLIP layout, used by `cada`) reads the caption with [ENC] first
and cross-attends from every text token to every image token. Its cross-attention weights,
averaged over heads and (by default) over all layers, give each text token a distribution over
the image tokens; the class token is dropped, the rest is renormalised and laid out on the patch
grid (`backbone.visual.grid`). Word pieces are merged into words through the tokenizer's
character offsets, and each attribute phrase found by `tbps.data.attributes` gets the mean map of
its tokens. Overlays are written as PNGs (PIL only) with an index.json and an index.html.

Why all layers by default: a single layer's cross-attention is often specialised (early layers
spread out, late ones collapse onto a few tokens), while the mean over layers is a stable,
parameter-free summary of where the text looked. `layers="last"` or a layer index is available.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.attributes import find_attribute_phrases, token_phrase_ids


@dataclass
class AssociationMap:
    """One heat map over the patch grid (rows x cols, sums to 1) for a word, phrase or the caption."""

    kind: str  # "caption" ([ENC] token), "word" or "phrase"
    label: str
    start: int  # character span in the caption (0, 0 for the caption map)
    end: int
    weights: np.ndarray = field(repr=False)
    file: str | None = None


@dataclass
class Associations:
    text: str
    grid: tuple[int, int]
    layers: str
    match_prob: float  # softmax of the matching head for this (image, caption) pair
    cosine: float  # cosine of the projected global features
    maps: list[AssociationMap]

    def by_kind(self, kind: str) -> list[AssociationMap]:
        return [m for m in self.maps if m.kind == kind]


@torch.no_grad()
def token_maps(backbone: Any, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
               layers: str | int = "all") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (per-token maps [B, L, rows, cols] summing to 1, text hidden [B, L, W], image tokens).

    `layers`: "all" (mean over layers), "last", or a layer index.
    """
    _, image_tokens = backbone.encode_image(images)
    hidden, weights = backbone.text(ids, mask, image_tokens, return_cross_weights=True)
    stacked = torch.stack(weights)  # [layers, B, heads, L, 1 + P]
    if layers == "all":
        w = stacked.mean(dim=(0, 2))
    elif layers == "last":
        w = stacked[-1].mean(1)
    else:
        w = stacked[int(layers)].mean(1)
    w = w[..., 1:].float()  # drop the image class token, renormalise over the patches
    w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    rows, cols = backbone.visual.grid
    return w.reshape(*w.shape[:2], rows, cols), hidden, image_tokens


def word_spans(text: str, offsets: list[tuple[int, int]], first: int, last: int) -> list[tuple[int, int, list[int]]]:
    """Group token positions first..last-1 into words -> [(start, end, positions)].

    A token continues the previous word when it starts where that one ended and both touching
    characters are letters or digits (WordPiece "##" pieces); punctuation-only words are dropped.
    """
    words: list[tuple[int, int, list[int]]] = []
    for pos in range(first, last):
        s, e = offsets[pos]
        if e <= s:
            continue
        if words and s == words[-1][1] and text[s - 1].isalnum() and text[s].isalnum():
            ws, _, members = words[-1]
            words[-1] = (ws, e, members + [pos])
        else:
            words.append((s, e, [pos]))
    return [w for w in words if any(c.isalnum() for c in text[w[0]:w[1]])]


@torch.no_grad()
def association_maps(method: Any, tokenizer: Any, image: Image.Image, text: str, transform: Any, max_len: int,
                     layers: str | int = "all", include_person: bool = False) -> Associations:
    """Maps for the caption ([ENC] token), every word and every attribute phrase of `text` on `image`."""
    backbone = method.backbone
    if getattr(backbone.text, "encoder", None) is None or backbone.text.encoder.layer[0].crossattention is None:
        raise ValueError("association maps need an image-grounded text encoder (blip layout with cross-attention)")
    device = next(method.parameters()).device
    tb = tokenizer.encode([text], max_len)
    n = int(tb.attention_mask[0].sum())
    ids, mask = tb.ids[:, :n].clone().to(device), tb.attention_mask[:, :n].to(device)
    try:
        ids[:, 0] = tokenizer.token_id("[ENC]")
    except KeyError:
        pass  # a tokenizer without [ENC]: the encoder reads [CLS], as BLIP's does before fine-tuning
    images = transform(image.convert("RGB"), None)[None].to(device)
    maps, hidden, _ = token_maps(backbone, images, ids, mask, layers)
    maps = maps[0].cpu()
    offsets = tb.offsets[0][:n]

    match_prob = float("nan")
    if hasattr(method, "itm_head"):
        match_prob = float(method.itm_head(hidden[:, 0]).float().softmax(-1)[0, 1])
    img_emb, _ = backbone.encode_image(images)
    txt_emb, _ = backbone.encode_text(tb.ids[:, :n].to(device), mask)
    cosine = float(F.cosine_similarity(img_emb.float(), txt_emb.float())[0])

    out = [AssociationMap("caption", "[ENC] (whole caption)", 0, 0, maps[0].numpy())]
    for s, e, members in word_spans(text, offsets, 1, n - 1):
        out.append(AssociationMap("word", text[s:e], s, e, maps[members].mean(0).numpy()))
    phrases = find_attribute_phrases(text, include_person)
    pid = token_phrase_ids(offsets, phrases)
    for k, p in enumerate(phrases):
        members = [i for i, j in enumerate(pid) if j == k]
        if members:
            out.append(AssociationMap("phrase", p.text, p.start, p.end, maps[members].mean(0).numpy()))
    return Associations(text, tuple(backbone.visual.grid), str(layers), match_prob, cosine, out)


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
    include_person = bool(loaded.method.cfg.get("attribute_include_person", False))
    assoc = association_maps(loaded.method, loaded.tokenizer, image, text, loaded.test_transform(), loaded.max_len,
                             layers, include_person)
    model_size = tuple(loaded.method.backbone.cfg.image_size)
    folder = write_explanation(assoc, image, out_dir, model_size)
    return {"out": str(folder), "index": str(folder / "index.html"), "grid": list(assoc.grid),
            "match_prob": assoc.match_prob, "cosine": assoc.cosine,
            "maps": [{"kind": m.kind, "label": m.label, "file": m.file} for m in assoc.maps]}
