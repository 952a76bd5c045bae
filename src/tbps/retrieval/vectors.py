"""Where an index's vectors are searched: its "backend".

* `faiss` (default): a FAISS file inside the index folder (`faiss_index`: flat / ivf / ivf_pca / hnsw).
* `milvus`: a Milvus collection (`milvus_store`): embedded Milvus Lite, a file `milvus.db` inside
  the index folder, by default; a Milvus server or cluster with `uri=http(s)://HOST:19530`.

Either way the index folder keeps the manifest and the feature shards (ids, paths, `emb` and the
method's other features, e.g. `logvar`, `tokens`): the manifest is the single source of truth, the backend a searchable
copy of its vectors. A Milvus collection also holds each image's file key and the small extras
(`logvar`) as fields; large token maps (`tokens` at paper size) stay in the shards (too large for a Milvus field) and are
read by id for the top-K re-rank only.

Milvus writes cannot join the manifest's atomic rename, so a writer brings the collection to the
manifest's content (`sync`): rows the manifest does not name are deleted, missing rows upserted.
A killed writer therefore leaves at most rows the next write removes, and searchers drop ids the
manifest does not hold.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import faiss_index as fx

BACKENDS = ("faiss", "milvus")
TOKEN_ENV = "TBPS_MILVUS_TOKEN"  # where a Milvus token is read from (never stored)


def backend_of(manifest: dict[str, Any]) -> str:
    return str(manifest.get("backend", "faiss"))


@dataclass(frozen=True)
class MilvusTarget:
    """Where a Milvus-backed index lives. `uri` None = Milvus Lite inside the index folder."""

    uri: str | None = None
    collection: str | None = None
    token: str | None = field(default=None, repr=False)  # passed to Milvus, never written anywhere
    tls: dict[str, Any] | None = None  # pymilvus TLS options (secure, server_pem_path, ...): paths, no secrets
    index_type: str | None = None
    index_params: dict[str, Any] | None = None

    def resolve(self, index_dir: Path) -> tuple[str, str]:
        """-> (uri to connect to, collection name)."""
        from .milvus_store import lite_uri

        uri = self.uri or lite_uri(index_dir)
        name = self.collection or "tbps_" + re.sub(r"[^0-9A-Za-z_]", "_", Path(index_dir).resolve().name)
        return uri, name

    @classmethod
    def from_manifest(cls, index_dir: Path, entry: dict[str, Any], **overrides: Any) -> "MilvusTarget":
        """The target a manifest records; a Lite file is found inside the folder wherever it moved."""
        uri = None if entry.get("lite") else entry["uri"]
        token = overrides.pop("token", None) or os.environ.get(TOKEN_ENV) or None
        return cls(uri=overrides.pop("uri", None) or uri, collection=overrides.pop("collection", None)
                   or entry["collection"], token=token, tls=entry.get("tls"), **overrides)


def milvus_extras(features: dict[str, Any]) -> dict[str, int]:
    """Per-image features stored as Milvus fields: those (beyond `emb`) small enough for one."""
    from .milvus_store import MAX_FIELD_FLOATS

    out = {}
    for name, meta in features.items():
        size = int(np.prod(meta["shape"])) if meta["shape"] else 1
        if name != "emb" and size <= MAX_FIELD_FLOATS:
            out[name] = size
    return out


class MilvusVectors:
    """A Milvus collection kept equal to an index folder's rows."""

    def __init__(self, index_dir: Path, target: MilvusTarget) -> None:
        from .milvus_store import MilvusStore

        self.index_dir, self.target = Path(index_dir), target
        uri, name = target.resolve(self.index_dir)
        self.store = MilvusStore(uri, name, token=target.token, tls=target.tls)

    def create(self, dim: int, extras: dict[str, int]) -> None:
        self.store.create(dim, extras, self.target.index_type, self.target.index_params)

    def sync(self, ids: np.ndarray, rows: Callable[[np.ndarray], dict[str, Any]], fresh: np.ndarray | None = None,
             batch: int = 4096) -> dict[str, int]:
        """Make the collection hold exactly `ids`: delete the others, upsert the missing ones and
        the `fresh` ones (written by this operation; `rows(ids)` -> {"emb", "files", extra: ...}). -> counts."""
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        present = self.store.ids()
        extra = np.setdiff1d(present, ids)
        todo = np.union1d(np.setdiff1d(ids, present), np.intersect1d(
            np.asarray(fresh if fresh is not None else [], dtype=np.int64), ids))
        if len(extra):
            self.store.delete(extra)
        for s in range(0, len(todo), batch):
            part = todo[s:s + batch]
            r = rows(part)  # the manifest holds each file once and `extra` is gone: no by-file lookup
            self.store.upsert(part, r.pop("emb"), r.pop("files"), r, replace_files=False)
        self.store.flush()
        return {"deleted": int(len(extra)), "upserted": int(len(todo))}

    def describe(self) -> dict[str, Any]:
        """The manifest's "milvus" entry: no secret; a Lite file by its name inside the folder."""
        from .milvus_store import LITE_FILE

        d = self.store.describe()
        if d["lite"]:
            d["uri"] = LITE_FILE
        d["tls"] = dict(self.target.tls) if self.target.tls else None
        d["count"] = self.store.count()
        return d

    @property
    def exact(self) -> bool:
        return self.store.describe()["index"].get("index_type", "FLAT") == "FLAT"

    def search(self, queries: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.store.search(queries, k)

    def close(self) -> None:
        self.store.close()


class FaissVectors:
    """The FAISS file named by a manifest, loaded."""

    def __init__(self, index_dir: Path, info: dict[str, Any]) -> None:
        from .storage import read_faiss  # storage opens its vectors through this module

        self.info = info
        self.index = read_faiss(Path(index_dir), info)  # a missing or damaged file is named, with how to rebuild

    @property
    def exact(self) -> bool:
        return self.info["kind"] == "flat"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return fx.search(self.index, queries, k, threads=threads)

    def close(self) -> None:
        pass


def open_vectors(index_dir: Path, manifest: dict[str, Any], **milvus: Any) -> FaissVectors | MilvusVectors:
    """The searchable vectors of an index folder (`milvus`: overrides such as uri / token)."""
    name = backend_of(manifest)
    if name == "milvus":
        return MilvusVectors(index_dir, MilvusTarget.from_manifest(index_dir, manifest["milvus"], **milvus))
    if name != "faiss":
        raise ValueError(f"{Path(index_dir) / 'manifest.json'}: unknown backend {name!r}; "
                         f"use one of {', '.join(BACKENDS)}")
    return FaissVectors(index_dir, manifest["faiss"])
