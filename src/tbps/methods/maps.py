"""Association maps: which image patches each word and attribute phrase of a caption attends to.

The parts any method with an image-grounded text encoder (BLIP layout) shares: cross-attention
weights averaged over heads and (by default) over all layers give each text token a distribution
over the image tokens; the class token is dropped, the rest is renormalised and laid out on the
patch grid (`backbone.visual.grid`). Word pieces are merged into words through the tokenizer's
character offsets, and each attribute phrase found by `tbps.data.attributes` gets the mean map of
its tokens. A method offering maps (`Method.association_maps`) runs its own text encoding and
match probability and calls `token_maps` and `collect_maps`; `tbps.explain` draws the result.

Why all layers by default: a single layer's cross-attention is often specialised (early layers
spread out, late ones collapse onto a few tokens), while the mean over layers is a stable,
parameter-free summary of where the text looked. `layers="last"` or a layer index is available.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.attributes import find_attribute_phrases, token_phrase_ids


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
    match_prob: float  # the method's probability that the image matches the caption (NaN: none)
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


def collect_maps(text: str, offsets: list[tuple[int, int]], maps: torch.Tensor, include_person: bool = False
                 ) -> list[AssociationMap]:
    """The caption map (position 0), one map per word and one per attribute phrase of `text`, from
    per-token maps [n, rows, cols] of its n positions (the last one, [SEP], belongs to no word)."""
    n = len(offsets)
    out = [AssociationMap("caption", "[ENC] (whole caption)", 0, 0, maps[0].numpy())]
    for s, e, members in word_spans(text, offsets, 1, n - 1):
        out.append(AssociationMap("word", text[s:e], s, e, maps[members].mean(0).numpy()))
    phrases = find_attribute_phrases(text, include_person)
    pid = token_phrase_ids(offsets, phrases)
    for k, p in enumerate(phrases):
        members = [i for i, j in enumerate(pid) if j == k]
        if members:
            out.append(AssociationMap("phrase", p.text, p.start, p.end, maps[members].mean(0).numpy()))
    return out
