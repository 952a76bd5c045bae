"""On-disk storage of an index folder: manifest, shards, the writer lock, garbage collection, and
`IndexReader`, the searcher's in-memory view. Layout and write protocol: see `tbps.retrieval.index`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..utils import atomic_write_bytes
from . import faiss_index as fx
from .vectors import FaissVectors, open_vectors

FORMAT = "tbps-index"
VERSION = 1
MANIFEST = "manifest.json"
BUILD_DIR = ".build"


class IndexFolderError(ValueError):
    """A problem with an index folder (missing, corrupt, busy); the message names the file."""


@contextlib.contextmanager
def index_lock(index_dir: Path):
    """Exclusive writer lock on the index folder (fails at once if another writer holds it)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(index_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexFolderError(f"index {index_dir} is being modified by another process "
                              f"(lock {index_dir / '.lock'} is held); try again when it has finished") from None
        yield
    finally:
        os.close(fd)


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir():
        raise FileNotFoundError(f"no index folder at {index_dir}")
    if not path.is_file():
        hint = " (a build was interrupted: run `tbps index build` again to resume it)" \
            if (index_dir / BUILD_DIR / "plan.json").is_file() else ""
        raise FileNotFoundError(f"{index_dir} is not a tbps index: {path} is missing{hint}")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFolderError(f"{path} is not valid JSON: {err}{rebuild_hint(index_dir)}") from err
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        got = m.get("format") if isinstance(m, dict) else f"a JSON {type(m).__name__}"
        raise IndexFolderError(f"{path} is not a tbps index manifest (format {got!r}){rebuild_hint(index_dir)}")
    problem = _manifest_problem(m)
    if problem:
        raise IndexFolderError(f"{path} is damaged: {problem}{rebuild_hint(index_dir)}")
    if m["version"] > VERSION:
        raise IndexFolderError(f"{path} has index format version {m['version']}; this tbps reads up to {VERSION}")
    return m


def read_faiss(index_dir: Path, info: dict[str, Any]) -> Any:
    """The FAISS index named by the manifest's `faiss` entry; a missing or damaged file is named."""
    path = index_dir / info["file"]
    if not path.is_file():
        raise IndexFolderError(f"faiss index {path} named in {index_dir / MANIFEST} is missing"
                               f"{rebuild_hint(index_dir)}")
    try:
        return fx.from_bytes(path.read_bytes(), info)
    except RuntimeError as err:  # faiss's own reader: truncated or not a faiss file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IndexFolderError(f"faiss index {path} is damaged ({first}){rebuild_hint(index_dir)}") from err


def rebuild_hint(index_dir: Path) -> str:
    return (f"; rebuild it with `tbps index build GALLERY --model RUN --out {index_dir} --overwrite` "
            "(or restore the folder from a copy)")


# What every reader of a manifest relies on: key -> (type, what it is).
_MANIFEST_FIELDS: dict[str, tuple[type, str]] = {
    "version": (int, "an integer"), "generation": (int, "an integer"), "count": (int, "an integer"),
    "next_id": (int, "an integer"), "dim": (int, "an integer"), "gallery_root": (str, "a path"),
    "model": (dict, "an object"), "shards": (list, "a list"),
}
# and the entry of its vector backend: "faiss" (the default) or "milvus"
_BACKEND_FIELDS: dict[str, tuple[str, ...]] = {"faiss": ("file", "kind"), "milvus": ("collection",)}


def _manifest_problem(m: dict[str, Any]) -> str | None:
    """The first field of a manifest that is missing or of the wrong shape, described; None if all fit."""
    for key, (kind, what) in _MANIFEST_FIELDS.items():
        if key not in m:
            return f"field {key!r} is missing"
        if not isinstance(m[key], kind) or isinstance(m[key], bool):
            return f"field {key!r} should be {what}, got {json.dumps(m[key])[:60]}"
    for j, shard in enumerate(m["shards"]):
        if not isinstance(shard, dict) or not isinstance(shard.get("file"), str) \
                or not isinstance(shard.get("count"), int):
            return f"shards[{j}] should be an object with 'file' and 'count', got {json.dumps(shard)[:60]}"
    backend = m.get("backend", "faiss")
    if backend not in _BACKEND_FIELDS:
        return f"field 'backend' should be one of {', '.join(_BACKEND_FIELDS)}, got {json.dumps(backend)[:60]}"
    if not isinstance(m.get(backend), dict):
        return f"field {backend!r} should be an object, got {json.dumps(m.get(backend))[:60]}"
    for key in _BACKEND_FIELDS[backend]:
        if not isinstance(m[backend].get(key), str):
            return f"{backend}.{key} should be a string, got {json.dumps(m[backend].get(key))[:60]}"
    for key in ("checkpoint", "method"):
        if not isinstance(m["model"].get(key), str):
            return f"model.{key} should be a string, got {json.dumps(m['model'].get(key))[:60]}"
    return None


def shard_name(gen: int, j: int) -> str:
    return f"shards/g{gen:06d}-{j:05d}.safetensors"


def write_shard(index_dir: Path, name: str, tensors: dict[str, torch.Tensor], items: list[dict[str, Any]]) -> dict:
    path = index_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={"items": json.dumps(items)})
    atomic_write_bytes(path, data)
    ids = tensors["ids"]
    return {"file": name, "count": int(len(ids)), "first_id": int(ids[0]) if len(ids) else None,
            "last_id": int(ids[-1]) if len(ids) else None, "bytes": len(data)}


def read_shard(index_dir: Path, shard: dict[str, Any], keys: Iterable[str] | None = None
               ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """-> (tensors, items) of one shard; `keys` limits the tensors read ("ids" always)."""
    path = index_dir / shard["file"]
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys()) if keys is None else ["ids", *[k for k in keys if k in f.keys() and k != "ids"]]
            tensors = {k: f.get_tensor(k) for k in names}
            items = json.loads((f.metadata() or {}).get("items", "[]"))
    except FileNotFoundError:
        raise IndexFolderError(f"index file {path} named in {index_dir / MANIFEST} is missing") from None
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for corrupt files
        raise IndexFolderError(f"cannot read index shard {path}: {err}{rebuild_hint(index_dir)}") from err
    if len(items) != len(tensors["ids"]):
        raise IndexFolderError(f"index shard {path} is inconsistent: {len(items)} items, {len(tensors['ids'])} rows")
    return tensors, items


def collect_garbage(index_dir: Path, manifest: dict[str, Any] | None) -> None:
    """Delete shard / faiss files the manifest does not name (leftovers of replaced or killed writes)."""
    keep = set()
    if manifest:
        keep = {s["file"] for s in manifest["shards"]} | ({manifest["faiss"]["file"]} if "faiss" in manifest else set())
    for f in [*index_dir.glob("shards/*.safetensors"), *index_dir.glob("faiss-*.index"),
              *index_dir.glob("shards/.*.tmp"), *index_dir.glob(".*.tmp")]:
        rel = f.relative_to(index_dir).as_posix()
        if rel not in keep:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class ShardWriter:
    """Accumulate rows and write shards of at most `rows` rows under generation `gen`."""

    def __init__(self, index_dir: Path, gen: int, rows: int, keep_emb: bool = True) -> None:
        self.index_dir, self.gen, self.rows = index_dir, gen, max(1, int(rows))
        self.parts: list[dict[str, torch.Tensor]] = []
        self.items: list[dict[str, Any]] = []
        self.pending = 0
        self.shards: list[dict[str, Any]] = []
        self.emb: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.keep_emb = keep_emb
        self.next_j = 0

    def add(self, tensors: dict[str, torch.Tensor], items: list[dict[str, Any]]) -> None:
        n = len(items)
        start = 0
        while start < n:
            take = min(n - start, self.rows - self.pending)
            self.parts.append({k: v[start:start + take] for k, v in tensors.items()})
            self.items.extend(items[start:start + take])
            self.pending += take
            start += take
            if self.pending >= self.rows:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        tensors = {k: torch.cat([p[k] for p in self.parts]) for k in self.parts[0]}
        self.shards.append(write_shard(self.index_dir, shard_name(self.gen, self.next_j), tensors, self.items))
        self.next_j += 1
        if self.keep_emb:
            self.emb.append(tensors["emb"].float().numpy())
            self.ids.append(tensors["ids"].numpy())
        self.parts, self.items, self.pending = [], [], 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.emb:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self.emb), np.concatenate(self.ids)


def features_meta(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape[1:])}
            for k, v in tensors.items() if k != "ids"}


def all_items(out: Path, manifest: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(shard number, item) for every item, in id order."""
    rows = []
    for j, shard in enumerate(manifest["shards"]):
        with safe_open(str(out / shard["file"]), framework="pt") as f:
            rows.extend((j, it) for it in json.loads((f.metadata() or {}).get("items", "[]")))
    return rows


def summary(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    backend = manifest.get("backend", "faiss")
    out_ = {"index": str(out), "images": manifest["count"], "method": manifest["model"]["method"],
            "capabilities": manifest["model"].get("capabilities"),
            "model": manifest["model"]["checkpoint"], "gallery": manifest["gallery_root"], "backend": backend,
            "skipped": manifest.get("skipped", []), "generation": manifest["generation"]}
    if backend == "milvus":
        m = manifest["milvus"]
        out_["milvus"] = {k: m.get(k) for k in ("uri", "lite", "collection", "index", "extras", "count")}
    else:
        f = manifest["faiss"]
        out_["faiss"] = {k: f.get(k) for k in ("kind", "nlist", "nprobe", "efSearch", "pca_dim", "recall_at_10",
                                               "recall_source", "threshold") if f.get(k) is not None}
    return out_


# ----------------------------------------------------------------------------- reading for search

class IndexReader:
    """An index loaded for searching: ids, file metadata, the per-image feature vectors ("emb" and
    any other [D] feature) in memory, the FAISS index, and memory-mapped access to larger stored
    features (e.g. patch tokens), read only for the candidates that need them."""

    def __init__(self, index_dir: str | Path, milvus: dict[str, Any] | None = None) -> None:
        """`milvus`: overrides for a Milvus-backed index (`token`, `uri`)."""
        self.dir = Path(index_dir)
        self.manifest = read_manifest(self.dir)
        features = self.manifest.get("features", {})
        self.vector_names = ["emb", *sorted(k for k, v in features.items() if k != "emb" and len(v["shape"]) == 1)]
        ids, items = [], []
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in self.vector_names}
        self._shard_rows: list[tuple[int, int, str]] = []  # (first row, end row, file)
        row = 0
        for shard in self.manifest["shards"]:
            t, its = read_shard(self.dir, shard, keys=self.vector_names)
            ids.append(t["ids"].numpy())
            for k in self.vector_names:
                if k in t:
                    parts[k].append(t[k].float())
            items.extend(its)
            self._shard_rows.append((row, row + len(its), str(self.dir / shard["file"])))
            row += len(its)
        dim = int(self.manifest["dim"])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        self.vectors = {k: torch.cat(v) for k, v in parts.items() if v}
        if "emb" not in self.vectors:
            self.vectors["emb"] = torch.zeros((0, dim))
        self.items = items
        if len(self.ids) > 1 and not (np.diff(self.ids) > 0).all():
            order = np.argsort(self.ids, kind="stable")  # shards are written in id order; be safe anyway
            self.ids = self.ids[order]
            self.items = [items[i] for i in order]
            self.vectors = {k: v[torch.from_numpy(order)] for k, v in self.vectors.items()}
            self._shard_rows = []  # stored features then need the slow path
            self._order = order
        else:
            self._order = None
        self.stored = set(features) | set(self.vectors)
        self.search_index = open_vectors(self.dir, self.manifest, **(milvus or {}))  # FAISS file or Milvus
        if isinstance(self.search_index, FaissVectors) and self.search_index.ntotal != len(self.ids):
            raise ValueError(f"index {self.dir} is inconsistent: faiss holds {self.search_index.ntotal} vectors, "
                             f"the shards {len(self.ids)}")
        self._handles: dict[str, Any] = {}

    def search(self, queries: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top `k` by inner product; ids the manifest does not hold (rows a
        killed Milvus write left, deleted by the next write) are dropped, the rest keep their order."""
        scores, ids = self.search_index.search(queries, k, threads)
        keep = ids[0] >= 0
        if len(self.ids):
            pos = np.clip(np.searchsorted(self.ids, ids[0]), 0, len(self.ids) - 1)
            keep &= self.ids[pos] == ids[0]
        return scores[0][keep], ids[0][keep]

    @property
    def exact(self) -> bool:
        return self.search_index.exact

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

    def features(self, rows: np.ndarray) -> "CandidateFeatures":
        """The stored features of the given rows, each read on first access."""
        return CandidateFeatures(self, rows)

    def read_rows(self, name: str, rows: np.ndarray) -> torch.Tensor:
        """Stored feature `name` of the given rows: from memory, or from the memory-mapped shards."""
        if name in self.vectors:
            return self.vectors[name][torch.from_numpy(np.asarray(rows, dtype=np.int64))]
        if name not in self.stored:
            raise KeyError(f"the index {self.dir} stores no {name!r} features (it holds {sorted(self.stored)})")
        out = []
        for r in rows.tolist():
            if self._order is not None:  # unusual layout: locate the row's shard by id
                r = int(self._order[r])
            for lo, hi, path in self._shard_rows or self._rows_by_shard():
                if lo <= r < hi:
                    f = self._handles.get(path)
                    if f is None:
                        f = self._handles[path] = safe_open(path, framework="pt")
                    out.append(f.get_slice(name)[r - lo:r - lo + 1])
                    break
        return torch.cat(out)

    def _rows_by_shard(self) -> list[tuple[int, int, str]]:
        rows, row = [], 0
        for shard in self.manifest["shards"]:
            rows.append((row, row + int(shard["count"]), str(self.dir / shard["file"])))
            row += int(shard["count"])
        return rows


class CandidateFeatures(Mapping):
    """What the index stored for a query's candidates, by feature name, read lazily and kept."""

    def __init__(self, reader: IndexReader, rows: np.ndarray) -> None:
        self.reader, self.rows = reader, rows
        self._cache: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = self.reader.read_rows(name, self.rows)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.reader.stored))

    def __len__(self) -> int:
        return len(self.reader.stored)
