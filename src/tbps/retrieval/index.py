"""The on-disk gallery index: features of every image, their files' metadata, a FAISS index.

Layout of an index folder::

    manifest.json                  the single source of truth (format, model identity, shards, faiss)
    shards/g000003-00000.safetensors   rows of features: "ids" [n], "emb" [n, D] (+ "logvar" for uca,
                                   "tokens" [n, 1+P, W] float16 for cada re-ranking); the files'
                                   metadata (path, size, mtime) in the safetensors header
    faiss-g000003.index            the vector index over "emb", keyed by item id
    .build/                        only while `build` runs: plan.json + one part file per batch
    .lock                          held by a writer (build, add, remove)

Every write is atomic: new data go to new files (named after the manifest's next generation),
then `manifest.json` is replaced in one `os.replace`, then files the manifest no longer names
are deleted. A reader therefore sees either the old or the new index, never a mix, and a killed
writer leaves only unreferenced files, removed by the next write.

A build encodes the images in batches and writes each batch's features to `.build/` before the
next; a killed build started again with the same gallery and model skips the batches already
there. Unreadable images are skipped and listed in the manifest (`skipped`), never fatal.

An index records the model it was built with (checkpoint path, SHA-256 of the weights, of the
tokenizer files and of the config keys that shape the embeddings); adding with, or searching
through, a model with another identity is refused with a message naming both.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from ..utils import atomic_write_bytes, atomic_write_json
from . import faiss_index as fx
from .gallery import IMAGE_EXTENSIONS, FileRecord, image_batches, scan_images

FORMAT = "tbps-index"
VERSION = 1
MANIFEST = "manifest.json"
BUILD_DIR = ".build"
DEFAULT_BATCH = 64
DEFAULT_SHARD_ROWS = 4096
MAX_HISTORY = 100  # entries of the manifest's "history" (build / add / remove) kept
# config keys that change what an image or a caption is encoded to (not how runs train or rank)
_IDENTITY_KEYS = (("method",), ("backbone",), ("data", "image_size"), ("data", "max_text_len"),
                  ("data", "tokenizer"))


class IndexFolderError(ValueError):
    """A problem with an index folder (missing, corrupt, busy); the message names the file."""


class ModelMismatchError(ValueError):
    """The model offered is not the one the index was built with."""


# ----------------------------------------------------------------------------- model identity

def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_identity(run: Any, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Identity of a loaded run: weights, tokenizer and embedding-relevant config, hashed.

    The weights' hash is reused from `recorded` when the file has the same path, size and
    modification time (hashing a 900 MB checkpoint costs seconds).
    """
    weights = Path(run.checkpoint) / "model.safetensors"
    st = weights.stat()
    path = str(weights.resolve())
    if (recorded and recorded.get("weights_path") == path and recorded.get("weights_size") == st.st_size
            and recorded.get("weights_mtime_ns") == st.st_mtime_ns and recorded.get("weights_sha256")):
        weights_sha = recorded["weights_sha256"]
    else:
        weights_sha = _sha256_file(weights)
    tok = hashlib.sha256()
    tok_dir = Path(run.run_dir) / "tokenizer"
    if tok_dir.is_dir():
        for f in sorted(tok_dir.iterdir()):
            if f.is_file():
                tok.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    subset: dict[str, Any] = {}
    for keys in _IDENTITY_KEYS:
        node: Any = run.cfg
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        subset[".".join(keys)] = node
    cfg_sha = hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()
    fingerprint = hashlib.sha256(f"{weights_sha}\n{tok.hexdigest()}\n{cfg_sha}".encode()).hexdigest()
    bb = run.method.backbone.cfg
    return {"method": run.cfg["method"]["name"], "run_dir": str(Path(run.run_dir).resolve()),
            "checkpoint": str(Path(run.checkpoint).resolve()), "weights_path": path,
            "weights_size": int(st.st_size), "weights_mtime_ns": int(st.st_mtime_ns), "weights_sha256": weights_sha,
            "tokenizer_sha256": tok.hexdigest(), "config_sha256": cfg_sha, "fingerprint": fingerprint,
            "image_size": list(bb.image_size), "embed_dim": int(bb.embed_dim), "max_text_len": int(run.max_len)}


def check_same_model(index_dir: str | Path, recorded: dict[str, Any], offered: dict[str, Any]) -> None:
    if recorded["fingerprint"] == offered["fingerprint"]:
        return
    parts = [name for name, key in (("weights", "weights_sha256"), ("tokenizer", "tokenizer_sha256"),
                                    ("embedding config", "config_sha256")) if recorded.get(key) != offered.get(key)]
    raise ModelMismatchError(
        f"index {index_dir} was built with the {recorded['method']} model {recorded['checkpoint']} "
        f"(fingerprint {recorded['fingerprint'][:12]}), but the model offered is the {offered['method']} model "
        f"{offered['checkpoint']} (fingerprint {offered['fingerprint'][:12]}; different {', '.join(parts)}). "
        "Embeddings of different models are not comparable: search with the original model, or build a new "
        f"index with `tbps index build GALLERY --model {offered['run_dir']} --out NEW_INDEX`.")


# ----------------------------------------------------------------------------- folder helpers

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
    "model": (dict, "an object"), "shards": (list, "a list"), "faiss": (dict, "an object"),
}


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
    for key in ("file", "kind"):
        if not isinstance(m["faiss"].get(key), str):
            return f"faiss.{key} should be a string, got {json.dumps(m['faiss'].get(key))[:60]}"
    for key in ("checkpoint", "method"):
        if not isinstance(m["model"].get(key), str):
            return f"model.{key} should be a string, got {json.dumps(m['model'].get(key))[:60]}"
    return None


def _shard_name(gen: int, j: int) -> str:
    return f"shards/g{gen:06d}-{j:05d}.safetensors"


def _write_shard(index_dir: Path, name: str, tensors: dict[str, torch.Tensor], items: list[dict[str, Any]]) -> dict:
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


def _gc(index_dir: Path, manifest: dict[str, Any] | None) -> None:
    """Delete shard / faiss files the manifest does not name (leftovers of replaced or killed writes)."""
    keep = set()
    if manifest:
        keep = {s["file"] for s in manifest["shards"]} | {manifest["faiss"]["file"]}
    for f in [*index_dir.glob("shards/*.safetensors"), *index_dir.glob("faiss-*.index"),
              *index_dir.glob("shards/.*.tmp"), *index_dir.glob(".*.tmp")]:
        rel = f.relative_to(index_dir).as_posix()
        if rel not in keep:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ----------------------------------------------------------------------------- encoding

def _load(model: Any, device: str | None) -> Any:
    from ..engine.runs import LoadedRun, load_run

    return model if isinstance(model, LoadedRun) else load_run(model, device=device)


@torch.no_grad()
def _encode(run: Any, images: torch.Tensor) -> dict[str, torch.Tensor]:
    feats = run.method.encode_images(images.to(run.device))
    return {k: v.detach().cpu() for k, v in feats.items()}


def _encode_batch(run: Any, batch: list[tuple[int, torch.Tensor | None, str | None]],
                  records: Sequence[FileRecord]) -> tuple[dict[str, torch.Tensor], list[int], list[dict[str, str]]]:
    ok = [(i, t) for i, t, err in batch if t is not None]
    skipped = [{"path": records[i].path, "error": err} for i, t, err in batch if t is None]
    if not ok:
        return {}, [], skipped
    return _encode(run, torch.stack([t for _, t in ok])), [i for i, _ in ok], skipped


def _empty_like_features(run: Any) -> dict[str, torch.Tensor]:
    """Zero-row features with the model's shapes (for a batch where every image failed)."""
    h, w = run.method.backbone.cfg.image_size
    probe = _encode(run, torch.zeros(1, 3, h, w))
    return {k: v[:0] for k, v in probe.items()}


class _ShardWriter:
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
        self.shards.append(_write_shard(self.index_dir, _shard_name(self.gen, self.next_j), tensors, self.items))
        self.next_j += 1
        if self.keep_emb:
            self.emb.append(tensors["emb"].float().numpy())
            self.ids.append(tensors["ids"].numpy())
        self.parts, self.items, self.pending = [], [], 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.emb:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return np.concatenate(self.emb), np.concatenate(self.ids)


def _item(rec: FileRecord, id_: int) -> dict[str, Any]:
    return {"id": int(id_), "path": rec.path, "size": rec.size, "mtime_ns": rec.mtime_ns}


def _features_meta(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape[1:])}
            for k, v in tensors.items() if k != "ids"}


# ----------------------------------------------------------------------------- build

def build_index(gallery: str | Path, model: Any, out: str | Path, *, batch_size: int = DEFAULT_BATCH,
                kind: str = "auto", threshold: int = fx.DEFAULT_APPROX_THRESHOLD,
                recall_target: float = fx.DEFAULT_RECALL_TARGET, shard_rows: int = DEFAULT_SHARD_ROWS,
                num_workers: int = 0, device: str | None = None, overwrite: bool = False,
                progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Encode every image under `gallery` with `model` (a run folder, checkpoint folder or LoadedRun)
    into the index folder `out`; resumes an interrupted build of the same gallery and model."""
    gallery, out = Path(gallery), Path(out)
    if not gallery.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {gallery}")
    fx.choose_kind(0, kind, threshold)  # validate early
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not scan_images([gallery]):  # an empty index is surely a wrong folder: refuse before writing
        raise ValueError(f"no images to index in {gallery}: no {', '.join(IMAGE_EXTENSIONS)} files under it "
                         "(hidden files and folders are ignored)")
    run = _load(model, device)
    out.mkdir(parents=True, exist_ok=True)
    with index_lock(out):
        old = read_manifest(out) if (out / MANIFEST).is_file() else None
        identity = model_identity(run, old["model"] if old else None)
        if old is not None and not overwrite:
            check_same_model(out, old["model"], identity)
            raise FileExistsError(f"{out} already holds an index of {old['count']} images of {old['gallery_root']}; "
                                  "use `tbps index add` / `tbps index remove` to change it, or --overwrite to rebuild")
        records = scan_images([gallery])
        plan = _resume_or_plan(out, gallery, records, identity, batch_size, overwrite, log)
        batch_size = int(plan["batch_size"])
        n_batches = -(-len(records) // batch_size)
        parts = out / BUILD_DIR
        done = {b for b in range(n_batches) if (parts / f"part-{b:06d}.safetensors").is_file()}
        if done:
            log(f"resuming: {len(done)} of {n_batches} batches already encoded in {parts}")
        t0 = time.perf_counter()
        todo = [b for b in range(n_batches) if b not in done]
        bar = tqdm(total=len(records), initial=sum(min(batch_size, len(records) - b * batch_size) for b in done),
                   desc="indexing", unit="img", disable=not progress, dynamic_ncols=True)
        encoded = 0
        try:
            # only the last batch can be short, so one loader over the missing batches' files keeps
            # their boundaries (resuming leaves a prefix done; any missing batch is redone)
            todo_records = [(b, p) for b in todo for p in range(b * batch_size, min(len(records), (b + 1) * batch_size))]
            loader = image_batches([records[p] for _, p in todo_records], run.test_transform(), batch_size, num_workers)
            start = 0
            for batch in loader:
                chunk = todo_records[start:start + len(batch)]
                start += len(batch)
                b = chunk[0][0]
                batch = [(p, t, e) for (_, p), (_, t, e) in zip(chunk, batch)]
                feats, pos, skipped = _encode_batch(run, batch, records)
                if not pos:
                    feats = _empty_like_features(run)
                tensors = {**feats, "pos": torch.tensor(pos, dtype=torch.int64)}
                atomic_write_bytes(parts / f"part-{b:06d}.safetensors",
                                   st_save({k: v.contiguous() for k, v in tensors.items()},
                                           metadata={"skipped": json.dumps(skipped)}))
                encoded += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()
        encode_s = time.perf_counter() - t0
        manifest = _finalise_build(out, gallery, records, identity, plan, n_batches, old, kind, threshold,
                                   recall_target, shard_rows)
        manifest["history"][-1].update(encode_seconds=round(encode_s, 3),
                                       images_per_second=round(encoded / encode_s, 2) if encode_s > 0 else None)
        atomic_write_json(out / MANIFEST, manifest)
        shutil.rmtree(parts, ignore_errors=True)
        _gc(out, manifest)
    return summary(out, manifest)


def _resume_or_plan(out: Path, gallery: Path, records: list[FileRecord], identity: dict[str, Any], batch_size: int,
                    overwrite: bool, log: Any) -> dict[str, Any]:
    parts = out / BUILD_DIR
    plan_path = parts / "plan.json"
    files = [r.to_dict() for r in records]
    if plan_path.is_file():
        try:
            plan = json.loads(plan_path.read_text())
        except json.JSONDecodeError:
            plan = None
        if plan is not None and plan.get("model", {}).get("fingerprint") != identity["fingerprint"]:
            if not overwrite:
                raise ModelMismatchError(
                    f"{out} holds an interrupted build with the model {plan['model'].get('checkpoint')} "
                    f"(fingerprint {str(plan['model'].get('fingerprint'))[:12]}), not {identity['checkpoint']} "
                    f"(fingerprint {identity['fingerprint'][:12]}); pass --overwrite to discard it and start over")
            plan = None
        elif plan is not None and (plan.get("files") != files or plan.get("gallery") != str(gallery.resolve())):
            log(f"the gallery changed since the interrupted build in {out} started: starting over")
            plan = None
        if plan is not None:
            if int(plan["batch_size"]) != batch_size:
                log(f"resuming with the interrupted build's batch size {plan['batch_size']} (not {batch_size})")
            return plan
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    plan = {"model": identity, "gallery": str(gallery.resolve()), "batch_size": int(batch_size), "files": files,
            "started": _now()}
    atomic_write_json(plan_path, plan, indent=None)
    return plan


def _finalise_build(out: Path, gallery: Path, records: list[FileRecord], identity: dict[str, Any], plan: dict,
                    n_batches: int, old: dict | None, kind: str, threshold: int, recall_target: float,
                    shard_rows: int) -> dict[str, Any]:
    gen = int(old["generation"]) + 1 if old else 1
    writer = _ShardWriter(out, gen, shard_rows)
    skipped: list[dict[str, str]] = []
    next_id = 0
    features: dict[str, Any] = {}
    for b in range(n_batches):
        data = (out / BUILD_DIR / f"part-{b:06d}.safetensors").read_bytes()
        tensors = st_load(data)
        with safe_open(str(out / BUILD_DIR / f"part-{b:06d}.safetensors"), framework="pt") as f:
            skipped.extend(json.loads((f.metadata() or {}).get("skipped", "[]")))
        pos = tensors.pop("pos").tolist()
        ids = torch.arange(next_id, next_id + len(pos), dtype=torch.int64)
        next_id += len(pos)
        features = features or _features_meta(tensors)
        writer.add({"ids": ids, **tensors}, [_item(records[p], i) for p, i in zip(pos, ids.tolist())])
    writer.flush()
    emb, ids = writer.arrays()
    dim = int(identity["embed_dim"])
    if emb.size == 0:
        emb = np.zeros((0, dim), np.float32)
    index, finfo = fx.build(emb, ids, kind, threshold, recall_target)
    finfo["file"] = f"faiss-g{gen:06d}.index"
    atomic_write_bytes(out / finfo["file"], fx.to_bytes(index))
    return {
        "format": FORMAT, "version": VERSION, "generation": gen,
        "created": _now(), "updated": _now(),
        "model": identity, "gallery_root": str(gallery.resolve()),
        "count": int(len(ids)), "next_id": int(next_id), "dim": dim,
        "features": features, "shards": writer.shards, "faiss": finfo,
        "skipped": skipped,
        "history": [{"op": "build", "time": _now(), "indexed": int(len(ids)), "skipped": len(skipped),
                     "batch_size": int(plan["batch_size"])}],
    }


# ----------------------------------------------------------------------------- add / remove

def _all_items(out: Path, manifest: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(shard number, item) for every item, in id order."""
    rows = []
    for j, shard in enumerate(manifest["shards"]):
        with safe_open(str(out / shard["file"]), framework="pt") as f:
            rows.extend((j, it) for it in json.loads((f.metadata() or {}).get("items", "[]")))
    return rows


def _rewrite(out: Path, manifest: dict[str, Any], drop_ids: set[int], gen: int) -> list[dict[str, Any]]:
    """Shards without `drop_ids`: untouched shards keep their files, others are rewritten."""
    shards = []
    j = 0
    for shard in manifest["shards"]:
        lo, hi = shard.get("first_id"), shard.get("last_id")
        if lo is None or not any(lo <= i <= hi for i in drop_ids):
            shards.append(shard)
            continue
        tensors, items = read_shard(out, shard)
        keep = [r for r, it in enumerate(items) if int(it["id"]) not in drop_ids]
        if not keep:
            continue
        idx = torch.tensor(keep, dtype=torch.long)
        shards.append(_write_shard(out, f"shards/g{gen:06d}-r{j:04d}.safetensors",
                                   {k: v[idx] for k, v in tensors.items()}, [items[r] for r in keep]))
        j += 1
    return shards


def _load_emb(out: Path, shards: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    embs, ids = [], []
    for shard in shards:
        t, _ = read_shard(out, shard, keys=["emb"])
        embs.append(t["emb"].float().numpy())
        ids.append(t["ids"].numpy())
    if not embs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(embs), np.concatenate(ids)


def _update_faiss(out: Path, manifest: dict[str, Any], shards: list[dict[str, Any]], gen: int,
                  add_emb: np.ndarray | None, add_ids: np.ndarray | None, drop_ids: set[int]) -> dict[str, Any]:
    """In-place add/remove when the kind allows and stays right for the new size, else a rebuild;
    the recall of an approximate index is measured again either way."""
    info = dict(manifest["faiss"])
    emb, ids = _load_emb(out, shards)
    if emb.size == 0:
        emb = np.zeros((0, int(manifest["dim"])), np.float32)
    wanted = fx.choose_kind(len(ids), info.get("requested", "auto"), info["threshold"])
    if wanted == "ivf" and len(ids) < 39:
        wanted = "flat"
    index = read_faiss(out, info) if wanted == info["kind"] else None
    if index is not None and drop_ids and not fx.remove(index, info, np.array(sorted(drop_ids))):
        index = None
    if index is not None and add_emb is not None and len(add_emb):
        fx.add(index, info, add_emb, add_ids)
    if index is None:
        index, new = fx.build(emb, ids, info.get("requested", "auto"), info["threshold"],
                              info.get("recall_target", fx.DEFAULT_RECALL_TARGET))
        info = {**new, "rebuilt": True}
    else:
        info.update(fx.tune(index, info["kind"], emb, ids, info.get("recall_target", fx.DEFAULT_RECALL_TARGET)))
        info.update(count=int(index.ntotal), bytes=int(len(fx.to_bytes(index))), rebuilt=False)
    if index.ntotal != len(ids):
        raise IndexFolderError(f"faiss index of {out} holds {index.ntotal} vectors, the shards {len(ids)}")
    info["file"] = f"faiss-g{gen:06d}.index"
    atomic_write_bytes(out / info["file"], fx.to_bytes(index))
    return info


def add_to_index(index_dir: str | Path, paths: Sequence[str | Path], *, model: Any = None,
                 batch_size: int = DEFAULT_BATCH, num_workers: int = 0, device: str | None = None,
                 progress: bool = True, log: Any = print) -> dict[str, Any]:
    """Encode new images (files or folders) into the index; a changed file replaces its old entry.

    `model` defaults to the checkpoint recorded in the index; any model must have its identity.
    """
    out = Path(index_dir)
    if not paths:
        raise ValueError("index add: give at least one image file or folder")
    manifest = read_manifest(out)
    recorded = manifest["model"]
    run = _load(model or recorded["checkpoint"], device)
    check_same_model(out, recorded, model_identity(run, recorded))
    records = scan_images(paths)
    with index_lock(out):
        manifest = read_manifest(out)
        _gc(out, manifest)
        current = {it["path"]: it for _, it in _all_items(out, manifest)}
        new, replaced, unchanged = [], [], []
        for r in records:
            old = current.get(r.path)
            if old is None:
                new.append(r)
            elif old["size"] == r.size and old["mtime_ns"] == r.mtime_ns:
                unchanged.append(r.path)
            else:
                new.append(r)
                replaced.append(int(old["id"]))
        gen = int(manifest["generation"]) + 1
        writer = _ShardWriter(out, gen, DEFAULT_SHARD_ROWS)
        skipped: list[dict[str, str]] = []
        next_id = int(manifest["next_id"])
        bar = tqdm(total=len(new), desc="indexing", unit="img", disable=not progress or not new, dynamic_ncols=True)
        for batch in image_batches(new, run.test_transform(), batch_size, num_workers):
            feats, pos, sk = _encode_batch(run, batch, new)
            skipped.extend(sk)
            bar.update(len(batch))
            if not pos:
                continue
            ids = torch.arange(next_id, next_id + len(pos), dtype=torch.int64)
            next_id += len(pos)
            writer.add({"ids": ids, **feats}, [_item(new[p], i) for p, i in zip(pos, ids.tolist())])
        bar.close()
        writer.flush()
        # a replaced file whose new version is unreadable loses its entry too (the old features are stale)
        drop = set(replaced)
        kept = _rewrite(out, manifest, drop, gen)
        shards = kept + writer.shards
        add_emb, add_ids = writer.arrays()
        finfo = _update_faiss(out, manifest, shards, gen, add_emb, add_ids, drop)
        skipped_paths = {s["path"] for s in skipped}
        added_paths = {r.path for r in new} - skipped_paths
        manifest.update(
            generation=gen, updated=_now(), shards=shards, faiss=finfo, next_id=next_id,
            count=int(sum(s["count"] for s in shards)),
            skipped=[s for s in manifest.get("skipped", []) if s["path"] not in added_paths] + skipped)
        if not manifest.get("features") and writer.shards:
            t, _ = read_shard(out, writer.shards[0])
            manifest["features"] = _features_meta(t)
        manifest["history"] = manifest["history"][-(MAX_HISTORY - 1):]
        manifest["history"].append({"op": "add", "time": _now(), "added": len(new) - len(skipped),
                                    "replaced": len(replaced), "unchanged": len(unchanged), "skipped": len(skipped)})
        atomic_write_json(out / MANIFEST, manifest)
        _gc(out, manifest)
    return {**summary(out, manifest), "added": len(new) - len(skipped), "replaced": len(replaced),
            "unchanged": unchanged, "skipped_now": skipped}


def remove_from_index(index_dir: str | Path, paths: Sequence[str | Path] = (), *, missing: bool = False,
                      log: Any = print) -> dict[str, Any]:
    """Remove images by file path, or every image under a folder path; with `missing`, also every
    image whose file no longer exists. Paths that match nothing are returned in `not_found`."""
    out = Path(index_dir)
    if not paths and not missing:
        raise ValueError("index remove: give image paths or folders to remove, or --missing")
    read_manifest(out)
    with index_lock(out):
        manifest = read_manifest(out)
        _gc(out, manifest)
        items = [it for _, it in _all_items(out, manifest)]
        by_path = {it["path"]: int(it["id"]) for it in items}
        drop: set[int] = set()
        not_found: list[str] = []
        for raw in paths:
            p = str(Path(raw).expanduser().resolve())
            if p in by_path:
                drop.add(by_path[p])
                continue
            prefix = p.rstrip("/") + "/"
            under = [i for path, i in by_path.items() if path.startswith(prefix)]
            if under:
                drop.update(under)
            else:
                not_found.append(str(raw))
        if missing:
            drop.update(int(it["id"]) for it in items if not Path(it["path"]).is_file())
        if drop:
            gen = int(manifest["generation"]) + 1
            shards = _rewrite(out, manifest, drop, gen)
            finfo = _update_faiss(out, manifest, shards, gen, None, None, drop)
            manifest.update(generation=gen, updated=_now(), shards=shards, faiss=finfo,
                            count=int(sum(s["count"] for s in shards)))
            manifest["history"] = manifest["history"][-(MAX_HISTORY - 1):]
            manifest["history"].append({"op": "remove", "time": _now(), "removed": len(drop)})
            atomic_write_json(out / MANIFEST, manifest)
            _gc(out, manifest)
    return {**summary(out, manifest), "removed": len(drop), "not_found": not_found}


def summary(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    f = manifest["faiss"]
    return {"index": str(out), "images": manifest["count"], "method": manifest["model"]["method"],
            "model": manifest["model"]["checkpoint"], "gallery": manifest["gallery_root"],
            "faiss": {k: f.get(k) for k in ("kind", "nlist", "nprobe", "efSearch", "recall_at_10", "threshold")
                      if f.get(k) is not None},
            "skipped": manifest.get("skipped", []), "generation": manifest["generation"]}
