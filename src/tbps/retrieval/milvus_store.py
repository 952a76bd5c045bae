"""A gallery's vectors in Milvus: embedded Milvus Lite (a file inside the index folder) by default,
a Milvus server or cluster by URI.

One collection holds one row per gallery image: the item id (primary key), the normalised
embedding (searched by inner product), the image's file key, and the small per-image extras a
method scores with (e.g. per-image log-variances `logvar`: D floats, an ARRAY<FLOAT> field). Everything a searcher
needs for the first stage is therefore in Milvus and reachable from every searcher of a
deployment. Extras too large for a field (image token maps `tokens` for re-ranking, (1+P) x W floats: 148k at
paper size, over Milvus's 4,096-element ARRAY and 65,535-character VARCHAR limits) are refused
here and stay in the index folder's safetensors shards, read by id for the top-K re-rank only
(see README, "Scaling out").

Writes are idempotent: `upsert` replaces rows by id, and first deletes any row of the same file
under another id, so re-adding a file replaces its entry; `delete` removes a row and its extras in
one operation (no orphan can remain). A killed bulk load resumes by asking `ids()` which rows are
already there. Secrets (a token) are passed in, never stored: `describe()` returns the URI without
credentials, fit for a manifest.

Milvus Lite is single-process (one process opens its file at a time) and offers FLAT / IVF_FLAT
indexes; a server offers HNSW, IVF_PQ, DiskANN and more via `index_type` / `index_params`.
"""
from __future__ import annotations

import math
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

import numpy as np

LITE_FILE = "milvus.db"
DEFAULT_COLLECTION = "tbps_gallery"
MAX_FIELD_FLOATS = 4096  # Milvus's largest ARRAY capacity: bigger extras stay in side storage
MAX_FILE_CHARS = 4096
DEFAULT_BATCH = 2000  # rows per upsert request (Milvus caps one request at 64 MB)


class MilvusStoreError(ValueError):
    """A problem with the Milvus collection (schema, connection, content); the message names it."""


def is_lite(uri: str) -> bool:
    """A local file path (Milvus Lite) rather than an http(s)/tcp URI (server or cluster)."""
    return "://" not in str(uri)


def lite_uri(index_dir: str | Path) -> str:
    return str(Path(index_dir).resolve() / LITE_FILE)


def public_uri(uri: str) -> str:
    """`uri` without user:password@ or query parameters (tokens must never reach a manifest)."""
    if is_lite(uri):
        return str(uri)
    parts = urllib.parse.urlsplit(str(uri))
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class MilvusStore:
    """One collection of gallery vectors (+ small extras) in Milvus / Milvus Lite."""

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION, *, token: str | None = None,
                 db_name: str = "", timeout: float | None = None, tls: dict[str, Any] | None = None) -> None:
        """`tls`: pymilvus's TLS options for a server (secure, server_pem_path, server_name,
        client_pem_path, client_key_path, ca_pem_path). `token`: "user:password" or an API key."""
        try:
            from pymilvus import MilvusClient
        except ImportError as e:  # the `milvus` extra is optional
            raise MilvusStoreError("the Milvus backend needs pymilvus and milvus-lite: "
                                   "pip install 'tbps[milvus]'") from e
        if not collection or not collection.replace("_", "a").isalnum() or collection[0].isdigit():
            raise MilvusStoreError(f"collection name {collection!r}: use letters, digits and _ "
                                   "(not starting with a digit)")
        self.uri, self.collection = str(uri), collection
        if is_lite(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client = MilvusClient(uri=self.uri, token=token or "", db_name=db_name, timeout=timeout,
                                       **(tls or {}))
        except Exception as e:  # pymilvus raises its own types; name the target instead of a traceback
            raise MilvusStoreError(f"cannot connect to Milvus at {public_uri(self.uri)}: {e}") from e
        self._extras: dict[str, int] | None = None
        self._dim: int | None = None

    # ------------------------------------------------------------------ schema

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def create(self, dim: int, extras: dict[str, int] | None = None, index_type: str | None = None,
               index_params: dict[str, Any] | None = None) -> None:
        """Create the collection (idempotent: an existing one must have the same dim and extras).

        `extras`: name -> floats per row, each stored as an ARRAY<FLOAT> field."""
        from pymilvus import DataType

        extras = dict(extras or {})
        for name, size in extras.items():
            if name in ("id", "emb", "file") or not name.isidentifier():
                raise MilvusStoreError(f"extra field name {name!r} is reserved or not an identifier")
            if not 0 < int(size) <= MAX_FIELD_FLOATS:
                raise MilvusStoreError(
                    f"extra {name!r} has {size} floats per image; a Milvus field holds at most "
                    f"{MAX_FIELD_FLOATS}: keep it in side storage (the index folder's shards)")
        if self.exists():
            have_dim, have_extras = self._schema()
            if have_dim != int(dim) or have_extras != {k: int(v) for k, v in extras.items()}:
                raise MilvusStoreError(
                    f"collection {self.collection!r} at {public_uri(self.uri)} holds dim {have_dim} with extras "
                    f"{have_extras}, asked for dim {dim} with extras {extras}: use another --collection")
            self.client.load_collection(self.collection)
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("emb", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("file", DataType.VARCHAR, max_length=MAX_FILE_CHARS)
        for name, size in extras.items():
            schema.add_field(name, DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=int(size))
        params = self.client.prepare_index_params()
        kind = index_type or ("FLAT" if is_lite(self.uri) else "AUTOINDEX")
        params.add_index("emb", index_type=kind, metric_type="IP", params=dict(index_params or {}))
        params.add_index("file", index_type="INVERTED")  # the by-file lookup of `upsert`
        self.client.create_collection(self.collection, schema=schema, index_params=params)
        self.client.load_collection(self.collection)
        self._dim, self._extras = int(dim), {k: int(v) for k, v in extras.items()}

    def _schema(self) -> tuple[int, dict[str, int]]:
        if self._dim is None:
            if not self.exists():
                raise MilvusStoreError(f"no collection {self.collection!r} at {public_uri(self.uri)}")
            desc = self.client.describe_collection(self.collection)
            dim, extras = None, {}
            for f in desc["fields"]:
                params = f.get("params", {})
                if f["name"] == "emb":
                    dim = int(params["dim"])
                elif f["name"] not in ("id", "file"):
                    extras[f["name"]] = int(params["max_capacity"])
            if dim is None:
                raise MilvusStoreError(f"collection {self.collection!r} at {public_uri(self.uri)} is not a "
                                       "tbps gallery (no 'emb' field)")
            self._dim, self._extras = dim, extras
        return int(self._dim), dict(self._extras or {})

    # ------------------------------------------------------------------ writes

    def upsert(self, ids: np.ndarray, emb: np.ndarray, files: Sequence[str],
               extras: dict[str, np.ndarray] | None = None, batch: int = DEFAULT_BATCH,
               replace_files: bool = True) -> int:
        """Write rows by id; a file already stored under another id loses that entry. -> rows written.

        `replace_files=False` skips the by-file lookup (one query per batch) for a caller that
        knows no other id holds these files, e.g. a bulk load from a manifest."""
        ids = np.asarray(ids, dtype=np.int64)
        emb = _f32(emb)
        dim, fields = self._schema()
        extras = {k: _f32(v).reshape(len(ids), -1) for k, v in (extras or {}).items()}
        if emb.shape != (len(ids), dim) or len(files) != len(ids):
            raise MilvusStoreError(f"upsert into {self.collection!r}: {len(ids)} ids, {len(files)} files and "
                                   f"embeddings {emb.shape} do not match (dim {dim})")
        if set(extras) != set(fields):
            raise MilvusStoreError(f"upsert into {self.collection!r}: extras {sorted(extras)} given, the "
                                   f"collection holds {sorted(fields)}")
        if len(set(ids.tolist())) != len(ids) or len(set(files)) != len(files):
            raise MilvusStoreError(f"upsert into {self.collection!r}: duplicate ids or files in one call")
        for s in range(0, len(ids), batch):
            sl = slice(s, s + batch)
            chunk_ids, chunk_files = ids[sl], list(files[sl])
            stale = [r["id"] for r in self.client.query(
                self.collection, filter=f"file in [{', '.join(_quote(f) for f in chunk_files)}]",
                output_fields=["id"]) if int(r["id"]) not in set(chunk_ids.tolist())] if replace_files else []
            if stale:
                self.client.delete(self.collection, ids=[int(i) for i in stale])
            rows = [{"id": int(i), "emb": e.tolist(), "file": f, **{k: v[s + j].tolist() for k, v in extras.items()}}
                    for j, (i, e, f) in enumerate(zip(chunk_ids, emb[sl], chunk_files))]
            self.client.upsert(self.collection, rows)
        return int(len(ids))

    def delete(self, ids: np.ndarray, batch: int = 10_000) -> None:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        for s in range(0, len(ids), batch):
            self.client.delete(self.collection, ids=ids[s:s + batch])

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.collection)
        self._dim = self._extras = None

    def flush(self) -> None:
        self.client.flush(self.collection)

    # ------------------------------------------------------------------ reads

    def search(self, queries: np.ndarray, k: int, search_params: dict[str, Any] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """-> (scores [Q, k], ids [Q, k]) by inner product, best first; missing results have id -1."""
        queries = _f32(np.atleast_2d(queries))
        k = max(1, int(k))
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        res = self.client.search(self.collection, data=[q.tolist() for q in queries], limit=k, anns_field="emb",
                                 search_params={"metric_type": "IP", "params": dict(search_params or {})},
                                 output_fields=[])
        for qi, hits in enumerate(res):
            for j, h in enumerate(hits[:k]):
                scores[qi, j], found[qi, j] = float(h["distance"]), int(h["id"])
        return scores, found

    def fetch(self, ids: np.ndarray, fields: Sequence[str] = ("emb",)) -> dict[str, Any]:
        """Rows by id, in the order asked: {"emb": [n, D], "file": [...], extra: [n, size]};
        a missing id raises KeyError naming it."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64)]
        rows = {int(r["id"]): r for r in self.client.get(self.collection, ids=ids, output_fields=list(fields))} \
            if ids else {}
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"ids {missing[:5]} are not in Milvus collection {self.collection!r}")
        out: dict[str, Any] = {}
        for f in fields:
            vals = [rows[i][f] for i in ids]
            out[f] = vals if f == "file" else np.asarray(vals, dtype=np.float32).reshape(len(ids), -1)
        return out

    def ids(self, batch: int = 10_000) -> np.ndarray:
        """Every stored id, sorted (what a resumed load skips)."""
        it = self.client.query_iterator(self.collection, batch_size=batch, filter="id >= 0", output_fields=["id"])
        out: list[int] = []
        try:
            while page := it.next():
                out.extend(int(r["id"]) for r in page)
        finally:
            it.close()
        return np.sort(np.asarray(out, dtype=np.int64))

    def count(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def describe(self) -> dict[str, Any]:
        """What a manifest records: backend, URI without secrets, collection, schema and index."""
        dim, extras = self._schema()
        index: dict[str, Any] = {}
        try:
            names = self.client.list_indexes(self.collection, field_name="emb")
            if names:
                d = self.client.describe_index(self.collection, index_name=names[0])
                index = {k: d[k] for k in ("index_type", "metric_type") if k in d}
                index.update({k: v for k, v in d.items() if k not in ("index_type", "metric_type", "field_name",
                                                                         "index_name", "total_rows", "indexed_rows",
                                                                         "pending_index_rows", "state")})
        except Exception:  # an index description is informative only
            pass
        return {"backend": "milvus", "lite": is_lite(self.uri), "uri": public_uri(self.uri),
                "collection": self.collection, "dim": dim, "extras": extras, "index": index}

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def rows_per_request(dim: int, extra_floats: int = 0) -> int:
    """Rows per upsert that keep one request well under Milvus's 64 MB cap (floats sent as JSON-ish lists)."""
    per_row = 24 * (dim + extra_floats) + 512
    return int(max(1, min(DEFAULT_BATCH, math.floor(16 * 2**20 / per_row))))
