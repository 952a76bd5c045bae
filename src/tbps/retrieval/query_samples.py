"""Query-like vectors for an approximate index's recall estimate: the model's own text embeddings
of captions.

Noisy gallery points overstate recall (they sit closer to the gallery than text queries do), so
`tbps index build` measures recall on what searches will look like: the embeddings of the run's
validation captions (training captions where the dataset has no validation split; never test),
or of a file of the user's own queries (`--recall-captions FILE`, one per line). Where neither is
at hand the index falls back to noisy gallery points and says so (`recall_source`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .faiss_index import RECALL_QUERIES


def captions_from_file(path: str | Path) -> list[str]:
    """One caption per non-empty line."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--recall-captions: no file {p}")
    lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines()]
    caps = [s for s in lines if s]
    if not caps:
        raise ValueError(f"--recall-captions: {p} holds no caption (one per line)")
    return caps


def run_captions(run: Any, log: Any = print) -> list[str]:
    """The run's validation captions (training captions without a validation split); [] when the
    run's dataset is not on this machine."""
    from ..engine.build import load_data

    try:
        dataset = load_data(run.cfg)
    except Exception as e:  # the dataset is optional here: the estimate falls back, and says so
        log(f"recall estimate: the run's dataset ({run.cfg['data'].get('dataset')} at "
            f"{run.cfg['data'].get('root')}) is not readable ({e}); using noisy gallery points instead")
        return []
    if dataset.val is not None:
        return list(dataset.val.captions)
    return [s.caption for s in dataset.train]


@torch.no_grad()
def embed_captions(run: Any, captions: list[str], n: int = RECALL_QUERIES, seed: int = 0,
                   batch_size: int = 128) -> np.ndarray:
    """Normalised text embeddings of at most `n` of `captions` (a seeded sample)."""
    from ..data.loader import tokens_to_dict

    if len(captions) > n:
        pick = np.sort(np.random.default_rng(seed).choice(len(captions), n, replace=False))
        captions = [captions[i] for i in pick]
    out = []
    for s in range(0, len(captions), batch_size):
        tb = tokens_to_dict(run.tokenizer.encode(captions[s:s + batch_size], run.max_len))
        emb = run.method.encode_texts({k: v.to(run.device) for k, v in tb.items()})["emb"].float().cpu()
        out.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def recall_queries_for(run: Any, captions_file: str | Path | None = None, n: int = RECALL_QUERIES,
                       log: Any = print) -> tuple[np.ndarray | None, dict[str, Any]]:
    """-> (query-like vectors or None, what they are, for the manifest)."""
    if captions_file is not None:
        caps, origin = captions_from_file(captions_file), str(Path(captions_file).resolve())
    else:
        caps, origin = run_captions(run, log), "the run's validation captions"
    if not caps:
        return None, {}
    q = embed_captions(run, caps, n)
    return q, {"recall_captions": origin, "recall_captions_used": int(len(q))}
