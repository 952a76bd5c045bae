"""Ceilings for calibrating difficulty: how well could a model do that reads attributes perfectly?

``attribute_oracle`` scores each caption's text-to-image Rank-1 for an ideal model that extracts
exactly the slots the caption names (``caption_mentions`` in attributes.json) and recognises every
identity's ground-truth attributes: the true identity ties with every gallery identity that agrees
on those slots, so its expected Rank-1 is (images of the true id) / (images of all tied ids).
The gap between this ceiling and a trained model is what the model fails to read; the ceiling
itself is set by terse captions and confusable variants.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable


def attribute_oracle(out_dir: str | Path, split: str = "test",
                     slots: Iterable[str] | None = None) -> dict[str, Any]:
    """Expected Rank-1 of a perfect attribute reader on `split` (optionally using only `slots`)."""
    data = json.loads((Path(out_dir) / "attributes.json").read_text())
    ids = {i["id"]: i["attributes"] for i in data["identities"]}
    images = [im for im in data["images"] if im["split"] == split]
    if not images:
        raise ValueError(f"no images in split {split!r}")
    n_img = Counter(im["id"] for im in images)
    gallery = list(n_img)
    allowed = None if slots is None else set(slots)
    scores: dict[bool, list[float]] = {True: [], False: []}
    for im in images:
        a = ids[im["id"]]
        for mention, terse in zip(im["caption_mentions"], im["terse_captions"]):
            used = [s for s in mention if allowed is None or s in allowed]
            tied = sum(n_img[j] for j in gallery if all(ids[j][s] == a[s] for s in used))
            scores[bool(terse)].append(n_img[im["id"]] / tied)
    both = scores[True] + scores[False]

    def mean(v: list[float]) -> float:
        return round(sum(v) / len(v), 4) if v else float("nan")

    return {"split": split, "num_queries": len(both), "num_ids": len(gallery), "num_images": len(images),
            "rank1": mean(both), "rank1_full": mean(scores[False]), "rank1_terse": mean(scores[True]),
            "chance_rank1": round(1.0 / len(gallery), 4)}
