"""`Searcher`: rank an index's images for a text description.

    from tbps import Searcher
    results = Searcher("my-index").search("a woman in a red coat with a black backpack", k=10)
    for hit in results:
        print(hit.rank, hit.score, hit.path)

Scores are the model's own text-to-image scores (`method.score(...)["t2i"]`): the cosine of the
normalised embeddings for irra, cada and uca's default ranking. The FAISS index returns the
candidates (exact below the approximate-index threshold). Per method:

* cada, `rerank=K`: the top K images by cosine are re-scored by the image-grounded matching head,
  exactly as `method.score(..., rerank_k=K)["t2i-rerank@K"]` does (match logit + cosine); images
  outside the top K keep cosine - 100 so they rank below every re-ranked one. Each re-ranked hit
  also gets the matching head's probability of "matched" (`match_probability`).
* uca: every hit gets the calibrated match probability of its (query, image) distance and the
  image's uncertainty; the results carry the query's uncertainty. If the run ranks by -W2 or -CSD
  instead of cosine, those are computed on all images (exact index) or on the top
  max(10 k, 256) cosine candidates (approximate index).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open

from . import faiss_index as fx
from .index import check_same_model, model_identity, read_faiss, read_manifest, read_shard


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


class IndexReader:
    """An index loaded for searching: ids, file metadata, "emb" (and "logvar") in memory, the FAISS
    index, and memory-mapped access to the per-image tokens that re-ranking reads."""

    def __init__(self, index_dir: str | Path) -> None:
        self.dir = Path(index_dir)
        self.manifest = read_manifest(self.dir)
        ids, items, emb, logvar = [], [], [], []
        self._shard_rows: list[tuple[int, int, str]] = []  # (first row, end row, file)
        row = 0
        for shard in self.manifest["shards"]:
            t, its = read_shard(self.dir, shard, keys=["emb", "logvar"])
            ids.append(t["ids"].numpy())
            emb.append(t["emb"].float().numpy())
            if "logvar" in t:
                logvar.append(t["logvar"].float())
            items.extend(its)
            self._shard_rows.append((row, row + len(its), str(self.dir / shard["file"])))
            row += len(its)
        dim = int(self.manifest["dim"])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.emb = np.ascontiguousarray(np.concatenate(emb)) if emb else np.zeros((0, dim), np.float32)
        self.logvar = torch.cat(logvar) if logvar else None
        self.items = items
        if len(self.ids) > 1 and not (np.diff(self.ids) > 0).all():
            order = np.argsort(self.ids, kind="stable")  # shards are written in id order; be safe anyway
            self.ids, self.emb = self.ids[order], self.emb[order]
            self.items = [items[i] for i in order]
            self.logvar = self.logvar[torch.from_numpy(order)] if self.logvar is not None else None
            self._shard_rows = []  # tokens then need the slow path
            self._order = order
        else:
            self._order = None
        self.faiss = read_faiss(self.dir, self.manifest["faiss"])
        if self.faiss.ntotal != len(self.ids):
            raise ValueError(f"index {self.dir} is inconsistent: faiss holds {self.faiss.ntotal} vectors, "
                             f"the shards {len(self.ids)}")
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.ids, ids)
        rows = np.clip(rows, 0, max(0, len(self.ids) - 1))
        if len(ids) and not (self.ids[rows] == ids).all():
            raise KeyError(f"ids {ids[self.ids[rows] != ids][:5].tolist()} are not in the index")
        return rows

    def item(self, id_: int) -> dict[str, Any] | None:
        if not len(self.ids):
            return None
        r = int(np.searchsorted(self.ids, id_))
        return self.items[r] if r < len(self.ids) and int(self.ids[r]) == int(id_) else None

    def tokens(self, rows: np.ndarray) -> torch.Tensor:
        """Re-ranking tokens of the given rows, read from the memory-mapped shards."""
        out = []
        for r in rows.tolist():
            if self._order is not None:  # unusual layout: locate the row's shard by id
                r = int(self._order[r])
            for lo, hi, path in self._shard_rows or self._rows_by_shard():
                if lo <= r < hi:
                    f = self._handles.get(path)
                    if f is None:
                        f = self._handles[path] = safe_open(path, framework="pt")
                    out.append(f.get_slice("tokens")[r - lo:r - lo + 1])
                    break
        return torch.cat(out)

    def _rows_by_shard(self) -> list[tuple[int, int, str]]:
        rows, row = [], 0
        for shard in self.manifest["shards"]:
            rows.append((row, row + int(shard["count"]), str(self.dir / shard["file"])))
            row += int(shard["count"])
        return rows


class Searcher:
    """Text search over an index folder made by `tbps index build`.

    `model` defaults to the checkpoint recorded in the index; any other path must hold the same
    weights (the index refuses a different model). `search_threads`: faiss threads per query.
    """

    def __init__(self, index_dir: str | Path, model: str | Path | None = None, device: str | None = None,
                 search_threads: int = 1) -> None:
        from ..engine.runs import load_run

        self.search_threads = int(search_threads)  # faiss threads per query (see faiss_index.search)
        self.index_dir = Path(index_dir)
        self.reader = IndexReader(self.index_dir)
        recorded = self.reader.manifest["model"]
        target = model or recorded["checkpoint"]
        if model is None and not Path(target).exists():
            raise FileNotFoundError(f"the model {target} recorded in {self.index_dir / 'manifest.json'} is gone; "
                                    "pass the same weights from their new place (Searcher(..., model=PATH) or --model)")
        self.run = load_run(target, device=device)
        check_same_model(self.index_dir, recorded, model_identity(self.run, recorded))
        self.method = self.run.method
        self.method_name = str(self.run.cfg["method"]["name"])
        self._lock = threading.Lock()
        self.supports_rerank = hasattr(self.method, "rerank") and "tokens" in self.reader.manifest.get("features", {})
        self.supports_uncertainty = hasattr(self.method, "match_probability") and self.reader.logvar is not None
        text = getattr(self.method.backbone, "text", None)
        enc = getattr(text, "encoder", None)
        self.supports_explain = bool(enc is not None and getattr(enc.layer[0], "crossattention", None) is not None)
        ks = getattr(self.method, "rerank_ks", None)
        self.default_rerank = int(ks[0]) if self.supports_rerank and ks else 0

    # ------------------------------------------------------------------ info
    def __len__(self) -> int:
        return len(self.reader)

    def info(self) -> dict[str, Any]:
        m = self.reader.manifest
        f = m["faiss"]
        return {"method": self.method_name, "images": len(self.reader), "model": m["model"]["checkpoint"],
                "gallery": m["gallery_root"], "index": {k: f.get(k) for k in ("kind", "recall_at_10", "nprobe",
                                                                              "efSearch", "nlist", "threshold")
                                                        if f.get(k) is not None},
                "rerank": self.supports_rerank, "default_rerank": self.default_rerank,
                "uncertainty": self.supports_uncertainty, "explain": self.supports_explain}

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
            raise ValueError(f"rerank={rerank}: re-ranking needs a cada model, but the index {self.index_dir} "
                             f"was built with {self.method_name}")
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
        exact = self.reader.manifest["faiss"]["kind"] == "flat"
        uca_score = self.method.cfg.get("score", "cosine") if self.supports_uncertainty else "cosine"
        n_cand = max(k, rr)
        if uca_score != "cosine":
            n_cand = n if exact else min(n, max(10 * k, 256))
        scores, ids = fx.search(self.reader.faiss, tf["emb"].numpy(), n_cand, threads=self.search_threads)
        keep = ids[0] >= 0
        cos, ids = scores[0][keep].astype(np.float32), ids[0][keep]
        rows = self.reader.rows_of(ids)
        t2 = time.perf_counter()
        final = torch.from_numpy(cos.copy())
        probs: dict[int, float] = {}
        reranked = np.zeros(len(ids), dtype=bool)
        if uca_score != "cosine":
            sub = {"emb": torch.from_numpy(self.reader.emb[rows]), "logvar": self.reader.logvar[torch.from_numpy(rows)]}
            final = self.method.similarity(uca_score, tf, sub)[0].float()
        if rr:
            final, probs = self._rerank(tf, cos, rows, rr)
            reranked[:rr] = True
        order = torch.argsort(final, descending=True, stable=True)[:k].numpy()
        t3 = time.perf_counter()
        hits = []
        for rank, j in enumerate(order.tolist(), 1):
            it = self.reader.items[int(rows[j])]
            hits.append(Hit(rank, int(ids[j]), it["path"], float(final[j]), float(cos[j]),
                            probs.get(j), None, bool(reranked[j]), it.get("size"), it.get("mtime_ns")))
        res = SearchResults(text, k, self.method_name, hits, rr or None)
        if self.supports_uncertainty:
            self._uncertainty(res, tf, rows[order])
        res.timings_ms = {"encode": round((t1 - t0) * 1e3, 3), "search": round((t2 - t1) * 1e3, 3),
                          "score": round((t3 - t2) * 1e3, 3), "total": round((time.perf_counter() - t0) * 1e3, 3)}
        return res

    def _rerank(self, tf: dict[str, torch.Tensor], cos: np.ndarray, rows: np.ndarray, K: int
                ) -> tuple[torch.Tensor, dict[int, float]]:
        """`method.rerank` on the top-K candidates (cosine order); the rest keep cosine - 100."""
        sim = torch.from_numpy(cos[:K].copy())[None]
        captured: list[torch.Tensor] = []
        with self._lock:  # one re-ranking at a time: the hook must see only this query's pairs
            tokens = self.reader.tokens(rows[:K])
            hook = self.method.itm_head.register_forward_hook(
                lambda m, i, o: captured.append(o.detach().float().cpu()))
            try:
                scored = self.method.rerank(sim, tf, {"tokens": tokens}, K)[0].float()
            finally:
                hook.remove()
        probs: dict[int, float] = {}
        if captured:  # one query: the head saw its K pairs in the top-k order of `sim`
            p = torch.cat(captured).softmax(-1)[:, 1]
            slots = sim.topk(K, dim=1).indices[0]
            if len(p) == K:
                probs = {int(c): float(p[s]) for s, c in enumerate(slots.tolist())}
        final = torch.from_numpy(cos.copy()) - 100.0
        final[:K] = scored
        return final, probs

    def _uncertainty(self, res: SearchResults, tf: dict[str, torch.Tensor], rows: np.ndarray) -> None:
        from ..methods.distributions import paired_distance, uncertainty

        m = self.method
        kind = m.cfg.get("uncertainty", "mean_var")
        res.query_uncertainty = float(uncertainty(tf["logvar"], kind)[0])
        res.calibrated = bool(float(m.calib_fitted) > 0) if hasattr(m, "calib_fitted") else None
        if not len(rows):
            return
        t = torch.from_numpy(rows)
        g_mu, g_lv = torch.from_numpy(self.reader.emb[rows]), self.reader.logvar[t]
        q_mu, q_lv = tf["emb"].expand(len(rows), -1), tf["logvar"].expand(len(rows), -1)
        d = paired_distance(m.cfg.get("distance", "w2"), q_mu, q_lv, g_mu, g_lv)
        p = m.match_probability(d)
        u = uncertainty(g_lv, kind)
        for h, pi, ui in zip(res.hits, p.tolist(), u.tolist()):
            h.match_probability, h.image_uncertainty = float(pi), float(ui)

    # ------------------------------------------------------------------ explain
    def explain(self, text: str, id_: int, layers: str | int = "all") -> dict[str, Any]:
        """Per-word and per-attribute-phrase association maps of `text` on indexed image `id_`."""
        from ..data.transforms import load_image
        from ..explain import association_maps

        if not self.supports_explain:
            raise ValueError(f"association maps need a cada (blip-layout) model; the index {self.index_dir} "
                             f"was built with {self.method_name}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text: the caption must be a non-empty string, got {text!r}")
        item = self.reader.item(id_)
        if item is None:
            raise KeyError(f"id: no image with id {id_} in the index {self.index_dir}")
        image = load_image(item["path"])
        with self._lock:
            assoc = association_maps(self.method, self.run.tokenizer, image, text.strip(), self.run.test_transform(),
                                     self.run.max_len, layers,
                                     bool(self.method.cfg.get("attribute_include_person", False)))
        return {"id": int(id_), "text": assoc.text, "grid": list(assoc.grid), "layers": assoc.layers,
                "match_probability": _finite(assoc.match_prob), "cosine": _finite(assoc.cosine),
                "maps": [{"kind": m.kind, "label": m.label, "start": m.start, "end": m.end,
                          "weights": np.round(m.weights.astype(np.float64), 5).tolist()} for m in assoc.maps]}


def _finite(x: float) -> float | None:
    return float(x) if x == x and abs(x) != float("inf") else None


def results_json(res: SearchResults) -> str:
    return json.dumps(res.to_dict(), indent=2)
