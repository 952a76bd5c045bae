"""`Searcher`: rank an index's images for a text description.

    from tbps import Searcher
    results = Searcher("my-index").search("a woman in a red coat with a black backpack", k=10)
    for hit in results:
        print(hit.rank, hit.score, hit.path)

Scores are the model's own: the method's `rank` re-scores the FAISS candidates (exact below the
approximate-index threshold) from the features the index stored for them, through the same code
as its evaluation `score`, and adds per-hit notes (match probability, uncertainty). What a model
offers beyond cosine ranking (re-ranking of a top K, uncertainty, association maps) comes from its
method's declared `capabilities()`; this module never names a method.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .identity import check_same_model, model_identity
from .storage import IndexReader, summary


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    score: float
    cosine: float
    match_probability: float | None = None
    image_uncertainty: float | None = None
    reranked: bool = False
    size: int | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResults:
    query: str
    k: int
    method: str
    hits: list[Hit]
    rerank: int | None = None
    query_uncertainty: float | None = None
    calibrated: bool | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i: int) -> Hit:
        return self.hits[i]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hits"] = [h.to_dict() for h in self.hits]
        return d


class Searcher:
    """Text search over an index folder made by `tbps index build`.

    `model` defaults to the checkpoint recorded in the index; any other path must hold the same
    weights (the index refuses a different model). `search_threads`: faiss threads per query.
    """

    def __init__(self, index_dir: str | Path, model: str | Path | None = None, device: str | None = None,
                 search_threads: int = 1, milvus_token: str | None = None) -> None:
        from ..engine.runs import load_run

        self.search_threads = int(search_threads)  # faiss threads per query (see faiss_index.search)
        self.index_dir = Path(index_dir)
        # a Milvus-backed index: the token comes from here or $TBPS_MILVUS_TOKEN, never from the folder
        self.reader = IndexReader(self.index_dir, {"token": milvus_token} if milvus_token else None)
        recorded = self.reader.manifest["model"]
        target = model or recorded["checkpoint"]
        if model is None and not Path(target).exists():
            raise FileNotFoundError(f"the model {target} recorded in {self.index_dir / 'manifest.json'} is gone; "
                                    "pass the same weights from their new place (Searcher(..., model=PATH) or --model)")
        self.run = load_run(target, device=device)
        check_same_model(self.index_dir, recorded, model_identity(self.run, recorded))
        self.method = self.run.method
        self.method_name = self.method.name
        self._lock = threading.Lock()
        self.capabilities = caps = self.method.capabilities()
        missing = [f for f in caps.index_features if f not in self.reader.stored]
        if missing:  # an index written before the method stored these: rank by cosine only
            caps = replace(caps, rerank=False, uncertainty=False)
        self.supports_rerank = caps.rerank
        self.supports_uncertainty = caps.uncertainty
        self.supports_explain = caps.association_maps
        self.max_rerank = caps.max_rerank
        self.default_rerank = int(caps.default_rerank) if caps.rerank else 0

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self.reader)

    def info(self) -> dict[str, Any]:
        m = self.reader.manifest
        s = summary(self.index_dir, m)
        return {"method": self.method_name, "images": len(self.reader), "model": m["model"]["checkpoint"],
                "gallery": m["gallery_root"], "backend": s["backend"], "index": s.get("faiss", s.get("milvus")),
                "rerank": self.supports_rerank, "default_rerank": self.default_rerank, "max_rerank": self.max_rerank,
                "uncertainty": self.supports_uncertainty, "explain": self.supports_explain,
                "capabilities": self.capabilities.to_dict()}

    def item(self, id_: int) -> dict[str, Any] | None:
        return self.reader.item(id_)

    # ------------------------------------------------------------------ search
    @torch.no_grad()
    def encode_text(self, text: str) -> dict[str, torch.Tensor]:
        from ..data.loader import tokens_to_dict

        tb = tokens_to_dict(self.run.tokenizer.encode([text], self.run.max_len))
        feats = self.method.encode_texts({k: v.to(self.run.device) for k, v in tb.items()})
        return {k: v.cpu() for k, v in feats.items()}

    def _validate(self, text: Any, k: Any, rerank: Any) -> tuple[str, int, int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text: the query must be a non-empty string, got {text!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: the number of results must be a positive integer, got {k!r}")
        if rerank is None:
            rerank = 0
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            raise ValueError(f"rerank: must be a non-negative integer (0 = off), got {rerank!r}")
        if rerank and not self.supports_rerank:
            raise ValueError(f"rerank={rerank}: re-ranking needs a method that declares it, but the index "
                             f"{self.index_dir} was built with a {self.method_name} model, which does not "
                             f"(or the index lacks the features it re-reads)")
        if rerank and self.max_rerank is not None and rerank > self.max_rerank:
            raise ValueError(f"rerank={rerank}: the {self.method_name} model re-ranks at most {self.max_rerank}")
        return text.strip(), int(k), int(rerank)

    @torch.no_grad()
    def search(self, text: str, k: int = 10, rerank: int | None = None) -> SearchResults:
        """The `k` best images for `text` (fewer if the index holds fewer)."""
        text, k, rerank = self._validate(text, k, rerank)
        t0 = time.perf_counter()
        n = len(self.reader)
        if n == 0:
            return SearchResults(text, k, self.method_name, [], rerank or None)
        with self._lock:
            tf = self.encode_text(text)
        t1 = time.perf_counter()
        k = min(k, n)
        rr = min(rerank, n)
        n_cand = min(n, max(k, int(self.method.search_candidates(k, rr, n, self.reader.exact))))
        cos, ids = self.reader.search(tf["emb"].numpy(), n_cand, threads=self.search_threads)
        cos = cos.astype(np.float32)
        rows = self.reader.rows_of(ids)
        t2 = time.perf_counter()
        with self._lock:  # one ranking at a time on the shared model
            ranking = self.method.rank(tf, self.reader.features(rows), torch.from_numpy(cos.copy()), rr)
        final = ranking.scores.float().cpu()
        order = torch.argsort(final, descending=True, stable=True)[:k].numpy()
        t3 = time.perf_counter()
        notes = {name: getattr(ranking, name) for name in ("match_probability", "image_uncertainty", "reranked")}
        hits = []
        for rank, j in enumerate(order.tolist(), 1):
            it = self.reader.items[int(rows[j])]
            hits.append(Hit(rank, int(ids[j]), it["path"], float(final[j]), float(cos[j]),
                            _note(notes["match_probability"], j), _note(notes["image_uncertainty"], j),
                            bool(notes["reranked"][j]) if notes["reranked"] is not None else False,
                            it.get("size"), it.get("mtime_ns")))
        res = SearchResults(text, k, self.method_name, hits, rr or None, ranking.query_uncertainty, ranking.calibrated)
        res.timings_ms = {"encode": round((t1 - t0) * 1e3, 3), "search": round((t2 - t1) * 1e3, 3),
                          "score": round((t3 - t2) * 1e3, 3), "total": round((time.perf_counter() - t0) * 1e3, 3)}
        return res

    # ------------------------------------------------------------------ explain
    def explain(self, text: str, id_: int, layers: str | int = "all") -> dict[str, Any]:
        """Per-word and per-attribute-phrase association maps of `text` on indexed image `id_`."""
        from ..data.transforms import load_image
        from ..explain import association_maps

        if not self.supports_explain:
            raise ValueError(f"association maps need a method that declares them; the index {self.index_dir} "
                             f"was built with a {self.method_name} model, which does not")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text: the caption must be a non-empty string, got {text!r}")
        item = self.reader.item(id_)
        if item is None:
            raise KeyError(f"id: no image with id {id_} in the index {self.index_dir}")
        image = load_image(item["path"])
        with self._lock:
            assoc = association_maps(self.method, image, text.strip(), self.run.test_transform(), self.run.max_len,
                                     layers)
        return {"id": int(id_), "text": assoc.text, "grid": list(assoc.grid), "layers": assoc.layers,
                "match_probability": _finite(assoc.match_prob), "cosine": _finite(assoc.cosine),
                "maps": [{"kind": m.kind, "label": m.label, "start": m.start, "end": m.end,
                          "weights": np.round(m.weights.astype(np.float64), 5).tolist()} for m in assoc.maps]}


def _note(values: torch.Tensor | None, j: int) -> float | None:
    """One candidate's note from a per-candidate tensor (None where absent or NaN)."""
    return None if values is None else _finite(float(values[j]))


def _finite(x: float) -> float | None:
    return float(x) if x == x and abs(x) != float("inf") else None


def results_json(res: SearchResults) -> str:
    return json.dumps(res.to_dict(), indent=2)
