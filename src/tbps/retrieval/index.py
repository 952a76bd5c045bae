"""Build, add to and remove from the on-disk gallery index: features of every image, their files'
metadata, a FAISS index. The folder's storage (manifest, shards, lock, reader) is `storage`, the
model identity `identity`; this module encodes images and writes new generations.

Layout of an index folder::

    manifest.json                  the single source of truth (format, model identity, shards, faiss)
    shards/g000003-00000.safetensors   rows of features: "ids" [n] and whatever the method's
                                   `encode_images` returns: "emb" [n, D], + e.g. "logvar" [n, D] or
                                   "tokens" [n, 1+P, W] float16 for re-ranking; the files'
                                   metadata (path, size, mtime) in the safetensors header
    faiss-g000003.index            the vector index over "emb", keyed by item id (backend faiss)
    milvus.db                      Milvus Lite's data (backend milvus without --milvus-uri; see `vectors`)
    recall-queries.safetensors     the query-like vectors an approximate index's recall is measured on
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
import json
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from tqdm.auto import tqdm

from ..utils import atomic_write_bytes, atomic_write_json
from . import faiss_index as fx
from .gallery import IMAGE_EXTENSIONS, FileRecord, image_batches, scan_images
from .identity import ModelMismatchError, check_same_model, model_identity
from .vectors import BACKENDS, MilvusTarget, MilvusVectors, backend_of, milvus_extras
from .storage import (BUILD_DIR, FORMAT, MANIFEST, VERSION, IndexFolderError, ShardWriter, all_items,  # noqa: F401
                      collect_garbage, features_meta, index_lock, now, read_faiss, read_manifest, read_shard, summary,
                      write_shard)

DEFAULT_BATCH = 64
DEFAULT_SHARD_ROWS = 4096
MAX_HISTORY = 100  # entries of the manifest's "history" (build / add / remove) kept
RECALL_QUERIES_FILE = "recall-queries.safetensors"  # query-like vectors the recall estimate is measured on


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


def _item(rec: FileRecord, id_: int) -> dict[str, Any]:
    return {"id": int(id_), "path": rec.path, "size": rec.size, "mtime_ns": rec.mtime_ns}


# ----------------------------------------------------------------------------- build

def build_index(gallery: str | Path, model: Any, out: str | Path, *, batch_size: int = DEFAULT_BATCH,
                kind: str = "auto", threshold: int = fx.DEFAULT_APPROX_THRESHOLD,
                recall_target: float = fx.DEFAULT_RECALL_TARGET, shard_rows: int = DEFAULT_SHARD_ROWS,
                num_workers: int = 0, device: str | None = None, overwrite: bool = False,
                backend: str = "faiss", milvus: MilvusTarget | None = None,
                recall_captions: str | Path | None = None, progress: bool = True, log: Any = print
                ) -> dict[str, Any] | None:
    """Encode every image under `gallery` with `model` (a run folder, checkpoint folder or LoadedRun)
    into the index folder `out`; resumes an interrupted build of the same gallery and model.

    `backend`: "faiss" (a file in the folder) or "milvus" (`milvus`: where; default Milvus Lite in
    the folder). `recall_captions`: a file of queries (one per line) to measure an approximate
    index's recall on (default: the run's validation captions). Under torchrun (`--nproc N`) every
    rank encodes every N-th batch; rank 0 writes the index and returns the summary, the others None."""
    gallery, out = Path(gallery), Path(out)
    if not gallery.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {gallery}")
    fx.choose_kind(0, kind, threshold)  # validate early
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not scan_images([gallery]):  # an empty index is surely a wrong folder: refuse before writing
        raise ValueError(f"no images to index in {gallery}: no {', '.join(IMAGE_EXTENSIONS)} files under it "
                         "(hidden files and folders are ignored)")
    from ..engine.distributed import all_true, broadcast_object, cleanup_distributed, init_distributed

    dist = init_distributed(backend="gloo")  # under torchrun / --nproc: N ranks (one process: a no-op)
    rank, world = dist.rank, dist.world_size
    run = _load(model, device)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with index_lock(out) if rank == 0 else contextlib.nullcontext():
            prepared, error = None, None
            if rank == 0:
                try:
                    prepared = _prepare_build(out, gallery, run, batch_size, overwrite, log)
                except Exception as e:  # every rank stops with rank 0's message
                    error = e
            if world > 1:
                shared = broadcast_object(None if rank else (prepared[3] if prepared else None, repr(error)))
                if error is not None:
                    raise error
                if shared[0] is None:
                    raise RuntimeError(f"index build: rank 0 failed: {shared[1]}")
                plan = shared[0]
                records = [FileRecord(f["path"], int(f["size"]), int(f["mtime_ns"])) for f in plan["files"]]
                old = identity = None
            elif error is not None:
                raise error
            if rank == 0:
                old, identity, records, plan = prepared
            t0 = time.perf_counter()
            ok, encoded = False, 0
            try:
                encoded = _encode_parts(out, run, records, plan, num_workers, rank, world,
                                        progress and rank == 0, log if rank == 0 else (lambda *a: None))
                ok = True
            finally:
                ok = all_true(ok)  # a rank that failed stops the others at this point, not at a hang
            if not ok:
                raise RuntimeError("index build: a process failed while encoding (see its error); run the same "
                                   "command again to resume")
            encode_s = time.perf_counter() - t0
            if rank != 0:
                return None
            batch_size = int(plan["batch_size"])
            n_batches = -(-len(records) // batch_size)
            manifest = _finalise_build(out, gallery, records, identity, plan, n_batches, old, kind, threshold,
                                       recall_target, shard_rows, run, backend, milvus or MilvusTarget(),
                                       recall_captions, log)
            manifest["history"][-1].update(encode_seconds=round(encode_s, 3), processes=world,
                                           images_per_second=round(encoded * world / encode_s, 2)
                                           if encode_s > 0 else None)
            atomic_write_json(out / MANIFEST, manifest)
            shutil.rmtree(out / BUILD_DIR, ignore_errors=True)
            collect_garbage(out, manifest)
    finally:
        cleanup_distributed(dist)
    return summary(out, manifest)


def _prepare_build(out: Path, gallery: Path, run: Any, batch_size: int, overwrite: bool, log: Any
                   ) -> tuple[dict | None, dict[str, Any], list[FileRecord], dict[str, Any]]:
    """Under the lock: check the folder and the model, scan the gallery, plan or resume. -> (old
    manifest, model identity, records, plan)."""
    old = read_manifest(out) if (out / MANIFEST).is_file() else None
    identity = model_identity(run, old["model"] if old else None)
    if old is not None and not overwrite:
        check_same_model(out, old["model"], identity)
        raise FileExistsError(f"{out} already holds an index of {old['count']} images of {old['gallery_root']}; "
                              "use `tbps index add` / `tbps index remove` to change it, or --overwrite to rebuild")
    records = scan_images([gallery])
    plan = _resume_or_plan(out, gallery, records, identity, batch_size, overwrite, log)
    return old, identity, records, plan


def _encode_parts(out: Path, run: Any, records: list[FileRecord], plan: dict[str, Any], num_workers: int,
                  rank: int, world: int, progress: bool, log: Any) -> int:
    """Encode the batches of the plan that are not in `.build/` yet and that fall to this rank
    (batch b goes to rank b mod world); each batch is written as one part file. -> images encoded."""
    batch_size = int(plan["batch_size"])
    n_batches = -(-len(records) // batch_size)
    parts = out / BUILD_DIR
    done = {b for b in range(n_batches) if (parts / f"part-{b:06d}.safetensors").is_file()}
    if done:
        log(f"resuming: {len(done)} of {n_batches} batches already encoded in {parts}")
    todo = [b for b in range(n_batches) if b not in done and b % world == rank]
    mine = [b for b in range(n_batches) if b % world == rank]
    bar = tqdm(total=sum(min(batch_size, len(records) - b * batch_size) for b in mine),
               initial=sum(min(batch_size, len(records) - b * batch_size) for b in mine if b in done),
               desc="indexing" if world == 1 else f"indexing (rank 0 of {world})", unit="img",
               disable=not progress, dynamic_ncols=True)
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
    return encoded


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
            "started": now()}
    atomic_write_json(plan_path, plan, indent=None)
    return plan


def _finalise_build(out: Path, gallery: Path, records: list[FileRecord], identity: dict[str, Any], plan: dict,
                    n_batches: int, old: dict | None, kind: str, threshold: int, recall_target: float,
                    shard_rows: int, run: Any, backend: str, milvus: MilvusTarget,
                    recall_captions: str | Path | None, log: Any) -> dict[str, Any]:
    gen = int(old["generation"]) + 1 if old else 1
    writer = ShardWriter(out, gen, shard_rows)
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
        features = features or features_meta(tensors)
        writer.add({"ids": ids, **tensors}, [_item(records[p], i) for p, i in zip(pos, ids.tolist())])
    writer.flush()
    emb, ids = writer.arrays()
    dim = int(identity["embed_dim"])
    if emb.size == 0:
        emb = np.zeros((0, dim), np.float32)
    manifest = {
        "format": FORMAT, "version": VERSION, "generation": gen,
        "created": now(), "updated": now(),
        "model": identity, "gallery_root": str(gallery.resolve()),
        "count": int(len(ids)), "next_id": int(next_id), "dim": dim,
        "features": features, "shards": writer.shards,
        "skipped": skipped,
        "history": [{"op": "build", "time": now(), "indexed": int(len(ids)), "skipped": len(skipped),
                     "batch_size": int(plan["batch_size"])}],
    }
    if backend == "milvus":
        manifest.update(_sync_milvus(out, milvus, dim, features, writer.shards, fresh=ids))
        return manifest
    queries = None
    if fx.choose_kind(len(ids), kind, threshold) != "flat":
        queries = _recall_queries(out, run, recall_captions, log, reuse=False)
    index, finfo = fx.build(emb, ids, kind, threshold, recall_target, queries=queries)
    finfo["file"] = f"faiss-g{gen:06d}.index"
    atomic_write_bytes(out / finfo["file"], fx.to_bytes(index))
    manifest["faiss"] = finfo
    return manifest


# ----------------------------------------------------------------------------- backends

def _recall_queries(out: Path, run: Any | None, captions: str | Path | None = None, log: Any = print,
                    reuse: bool = True) -> np.ndarray | None:
    """Query-like vectors for the recall estimate: saved in the folder by an earlier write (so a
    `remove`, which loads no model, re-tunes on them too), else the model's text embeddings of
    captions, saved for next time; None where neither is at hand (noisy gallery points then)."""
    from safetensors.numpy import load_file, save_file

    from .query_samples import recall_queries_for

    path = out / RECALL_QUERIES_FILE
    if path.is_file() and captions is None and reuse:
        return load_file(str(path))["queries"]
    if run is None:
        return None
    path.unlink(missing_ok=True)  # a build starts afresh: none from an older model
    q, meta = recall_queries_for(run, captions, log=log)
    if q is not None:
        tmp = out / f".{RECALL_QUERIES_FILE}.tmp"
        save_file({"queries": np.ascontiguousarray(q, dtype=np.float32)}, str(tmp),
                  metadata={k: str(v) for k, v in meta.items()})
        tmp.replace(path)
    return q


def _shard_rows(out: Path, shards: list[dict[str, Any]], extras: dict[str, int]) -> Any:
    """rows(ids) -> {"emb", "files", extra...} read from the shards (what a Milvus upsert sends)."""
    keys = ["emb", *extras]
    ids, files, parts = [], [], {k: [] for k in keys}
    for shard in shards:
        t, items = read_shard(out, shard, keys=keys)
        ids.append(t["ids"].numpy())
        files.extend(it["path"] for it in items)
        for k in keys:
            parts[k].append(t[k].float().reshape(len(items), -1).numpy())
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v}
    order = np.argsort(all_ids)

    def rows(want: np.ndarray) -> dict[str, Any]:
        r = order[np.searchsorted(all_ids[order], want)]
        return {"emb": arrays["emb"][r], "files": [files[i] for i in r], **{k: arrays[k][r] for k in extras}}

    return rows


def _sync_milvus(out: Path, target: MilvusTarget, dim: int, features: dict[str, Any],
                 shards: list[dict[str, Any]], fresh: np.ndarray | None) -> dict[str, Any]:
    """Bring the Milvus collection to the shards' rows (`fresh`: ids whose content is new). ->
    the manifest's backend entries."""
    extras = milvus_extras(features)
    vectors = MilvusVectors(out, target)
    try:
        vectors.create(dim, extras)
        ids = np.concatenate([read_shard(out, s, keys=[])[0]["ids"].numpy() for s in shards]) if shards \
            else np.zeros(0, np.int64)
        counts = vectors.sync(ids, _shard_rows(out, shards, extras), fresh=fresh)
        entry = {**vectors.describe(), "last_sync": counts}
    finally:
        vectors.close()
    return {"backend": "milvus", "milvus": entry}


# ----------------------------------------------------------------------------- add / remove

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
        shards.append(write_shard(out, f"shards/g{gen:06d}-r{j:04d}.safetensors",
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


def _update_vectors(out: Path, manifest: dict[str, Any], shards: list[dict[str, Any]], gen: int,
                    add_emb: np.ndarray | None, add_ids: np.ndarray | None, drop_ids: set[int],
                    run: Any | None = None, token: str | None = None) -> dict[str, Any]:
    """The manifest's backend entries after an add / remove."""
    if backend_of(manifest) == "milvus":
        target = MilvusTarget.from_manifest(out, manifest["milvus"], **({"token": token} if token else {}))
        return _sync_milvus(out, target, int(manifest["dim"]), manifest.get("features", {}), shards, fresh=add_ids)
    return {"faiss": _update_faiss(out, manifest, shards, gen, add_emb, add_ids, drop_ids, run)}


def _update_faiss(out: Path, manifest: dict[str, Any], shards: list[dict[str, Any]], gen: int,
                  add_emb: np.ndarray | None, add_ids: np.ndarray | None, drop_ids: set[int],
                  run: Any | None = None) -> dict[str, Any]:
    """In-place add/remove when the kind allows and stays right for the new size, else a rebuild;
    the recall of an approximate index is measured again either way (on the saved query-like
    vectors when there are some)."""
    info = dict(manifest["faiss"])
    emb, ids = _load_emb(out, shards)
    if emb.size == 0:
        emb = np.zeros((0, int(manifest["dim"])), np.float32)
    wanted = fx.choose_kind(len(ids), info.get("requested", "auto"), info["threshold"])
    if wanted in ("ivf", "ivf_pca") and len(ids) < 39:
        wanted = "flat"
    queries = _recall_queries(out, run) if wanted != "flat" else None
    index = read_faiss(out, info) if wanted == info["kind"] else None
    if index is not None and drop_ids and not fx.remove(index, info, np.array(sorted(drop_ids))):
        index = None
    if index is not None and add_emb is not None and len(add_emb):
        fx.add(index, info, add_emb, add_ids)
    if index is None:
        index, new = fx.build(emb, ids, info.get("requested", "auto"), info["threshold"],
                              info.get("recall_target", fx.DEFAULT_RECALL_TARGET), queries=queries)
        info = {**new, "rebuilt": True}
    else:
        info.update(fx.tune(index, info["kind"], emb, ids, info.get("recall_target", fx.DEFAULT_RECALL_TARGET),
                            queries=queries))
        info.update(count=int(index.ntotal), bytes=int(len(fx.to_bytes(index))), rebuilt=False)
    if index.ntotal != len(ids):
        raise IndexFolderError(f"faiss index of {out} holds {index.ntotal} vectors, the shards {len(ids)}")
    info["file"] = f"faiss-g{gen:06d}.index"
    atomic_write_bytes(out / info["file"], fx.to_bytes(index))
    return info


def add_to_index(index_dir: str | Path, paths: Sequence[str | Path], *, model: Any = None,
                 batch_size: int = DEFAULT_BATCH, num_workers: int = 0, device: str | None = None,
                 milvus_token: str | None = None, progress: bool = True, log: Any = print) -> dict[str, Any]:
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
        collect_garbage(out, manifest)
        current = {it["path"]: it for _, it in all_items(out, manifest)}
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
        writer = ShardWriter(out, gen, DEFAULT_SHARD_ROWS)
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
        if not manifest.get("features") and writer.shards:
            t, _ = read_shard(out, writer.shards[0])
            manifest["features"] = features_meta(t)
        manifest.update(_update_vectors(out, manifest, shards, gen, add_emb, add_ids, drop, run, milvus_token))
        skipped_paths = {s["path"] for s in skipped}
        added_paths = {r.path for r in new} - skipped_paths
        manifest.update(
            generation=gen, updated=now(), shards=shards, next_id=next_id,
            count=int(sum(s["count"] for s in shards)),
            skipped=[s for s in manifest.get("skipped", []) if s["path"] not in added_paths] + skipped)
        manifest["history"] = manifest["history"][-(MAX_HISTORY - 1):]
        manifest["history"].append({"op": "add", "time": now(), "added": len(new) - len(skipped),
                                    "replaced": len(replaced), "unchanged": len(unchanged), "skipped": len(skipped)})
        atomic_write_json(out / MANIFEST, manifest)
        collect_garbage(out, manifest)
    return {**summary(out, manifest), "added": len(new) - len(skipped), "replaced": len(replaced),
            "unchanged": unchanged, "skipped_now": skipped}


def remove_from_index(index_dir: str | Path, paths: Sequence[str | Path] = (), *, missing: bool = False,
                      milvus_token: str | None = None, log: Any = print) -> dict[str, Any]:
    """Remove images by file path, or every image under a folder path; with `missing`, also every
    image whose file no longer exists. Paths that match nothing are returned in `not_found`."""
    out = Path(index_dir)
    if not paths and not missing:
        raise ValueError("index remove: give image paths or folders to remove, or --missing")
    read_manifest(out)
    with index_lock(out):
        manifest = read_manifest(out)
        collect_garbage(out, manifest)
        items = [it for _, it in all_items(out, manifest)]
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
            manifest.update(_update_vectors(out, manifest, shards, gen, None, None, drop, token=milvus_token))
            manifest.update(generation=gen, updated=now(), shards=shards, count=int(sum(s["count"] for s in shards)))
            manifest["history"] = manifest["history"][-(MAX_HISTORY - 1):]
            manifest["history"].append({"op": "remove", "time": now(), "removed": len(drop)})
            atomic_write_json(out / MANIFEST, manifest)
            collect_garbage(out, manifest)
    return {**summary(out, manifest), "removed": len(drop), "not_found": not_found}
