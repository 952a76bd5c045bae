"""Vector search speed of the index kinds `tbps index build` uses, on galleries of 10k, 100k and 1M
embeddings: build time, memory, single-query latency p50/p99, batch throughput, recall@10 vs exact.

    python benchmarks/search_speed.py        # 10k, 100k, 1M; flat, ivf, ivf_pca (+ hnsw, Milvus Lite to 100k)
    python benchmarks/search_speed.py --sizes 10000 100000 --kinds flat ivf_pca milvus
    python benchmarks/search_speed.py --hnsw-max 1000000   # include the 1M hnsw build (~6 min on 2 cores)

The embeddings are synthetic (no real gallery of 1M people is at hand), in two kinds:

* `lowrank`: learned embeddings have a low intrinsic dimension. Points are clustered in a
  32-dimensional latent space (one centre per 50 images: a gallery grows by more people, not more
  photos of each), mapped linearly to the embedding dimension, plus a little isotropic noise.
* `isotropic`: one centre per 50 images with isotropic noise in all 256 dimensions (cosine ~0.7 to
  the centre): full intrinsic dimension, the hard case for any approximate index.

Queries are fresh samples of the same centres with 1.5 times the noise (a text query lands near,
not on, the images it describes). Random uniform vectors would make every approximate index look
bad; real embeddings should behave between the two kinds.

The indexes are built by the same code as `tbps index build` (`tbps.retrieval.faiss_index.build`),
including its automatic choice of nprobe / efSearch for recall@10 >= the target. The builder is
given query-like vectors to estimate recall on, as `tbps index build` gives the model's text
embeddings of captions: here an independent draw of the benchmark's query generator (another seed,
the stand-in for captions that are not the user's searches). That estimate is stored
(`build_time_recall_at_10`) and compared with the recall measured on the benchmark's own queries
(`recall_at_10`); `gallery_noise_recall_at_10` is what the old estimate from noisy gallery points
says at the same setting (too optimistic).

`milvus` rows: the same vectors in embedded Milvus Lite (`tbps.retrieval.milvus_store`, FLAT index:
exact; Milvus Lite offers FLAT and IVF_FLAT only), timed the same way through pymilvus.

Writes benchmarks/results/search_speed.json and .md (with machine info).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tbps.retrieval import faiss_index as fx  # noqa: E402
from tbps.utils import atomic_write_json, atomic_write_text, machine_info  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def clustered(n: int, dim: int, centres: np.ndarray, spread: float, rng: np.random.Generator,
              proj: np.ndarray | None = None, noise: float = 0.0, chunk: int = 100_000) -> np.ndarray:
    """n unit vectors: a random centre + Gaussian spread (in the centres' space), optionally mapped
    by `proj` [latent, dim] and given isotropic `noise` per dimension."""
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, len(centres), m)]
        x = x + spread * rng.standard_normal(x.shape).astype(np.float32)
        if proj is not None:
            x = x @ proj + noise * rng.standard_normal((m, dim)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(kind: str, n: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (gallery [n, dim], queries [Q, dim], calibration queries [Q, dim]) of the given kind: the
    calibration queries come from the queries' generator with another seed (what the index builder
    sees; the benchmark's queries stay unseen)."""
    rng = np.random.default_rng(args.seed)
    n_centres = max(100, n // args.per_centre)
    if kind == "isotropic":
        centres = rng.standard_normal((n_centres, args.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        emb = clustered(n, args.dim, centres, args.spread, np.random.default_rng(args.seed + 2))
        queries, calib = (clustered(args.queries, args.dim, centres, 1.5 * args.spread,
                                    np.random.default_rng(args.seed + s)) for s in (1, 3))
        return emb, queries, calib
    latent = args.latent_dim
    centres = rng.standard_normal((n_centres, latent)).astype(np.float32) / np.sqrt(latent)
    proj = rng.standard_normal((latent, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    spread, noise = 0.6 / np.sqrt(latent), 0.02 / np.sqrt(args.dim)  # overlapping clusters
    emb = clustered(n, args.dim, centres, spread, np.random.default_rng(args.seed + 2), proj, noise)
    queries, calib = (clustered(args.queries, args.dim, centres, 1.5 * spread, np.random.default_rng(args.seed + s),
                                proj, noise) for s in (1, 3))
    return emb, queries, calib


def bench(kind: str, emb: np.ndarray, queries: np.ndarray, truth: np.ndarray, latency_queries: int,
          recall_target: float, calib: np.ndarray) -> dict:
    ids = np.arange(len(emb), dtype=np.int64)
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    index, info = fx.build(emb, ids, kind=kind, threshold=1, recall_target=recall_target, queries=calib)
    total = time.perf_counter() - t0
    after = rss_mb()
    # single-query latency (what one search request pays)
    import faiss

    threads = faiss.omp_get_max_threads()
    lat = []
    for q in queries[:latency_queries]:  # one thread per query, as the Searcher does
        t = time.perf_counter()
        fx.search(index, q[None], 10, threads=1)
        lat.append((time.perf_counter() - t) * 1e3)
    faiss.omp_set_num_threads(threads)
    t = time.perf_counter()
    _, found = fx.search(index, queries, 10)  # a batch: all threads
    batch_s = time.perf_counter() - t
    row = {
        "kind": info["kind"], **({"requested": kind} if kind != info["kind"] else {}), "n": len(emb),
        "build_s": round(info["build_seconds"], 2), "tune_s": round(info.get("tune_seconds", 0.0), 2),
        "build_total_s": round(total, 2),
        "index_mb": round(info["bytes"] / 2**20, 1), "rss_delta_mb": round(after - before, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "batch_qps": round(len(queries) / batch_s, 1),
        "recall_at_10": round(fx.recall_at_k(found, truth), 4),
        "build_time_recall_at_10": info["recall_at_10"],
    }
    if info["kind"] != "flat":  # what noisy gallery points (the estimate without query-like vectors) claim
        noisy = fx.recall_queries(emb, fx.RECALL_QUERIES)
        row["gallery_noise_recall_at_10"] = round(
            fx.recall_at_k(fx.search(index, noisy, 10)[1], fx.exact_topk(emb, ids, noisy, 10)), 4)
    for key in PARAMS:
        if key in info:
            row[key] = info[key]
    del index
    gc.collect()
    return row


def bench_milvus(emb: np.ndarray, queries: np.ndarray, truth: np.ndarray, latency_queries: int) -> dict:
    """The same vectors in embedded Milvus Lite (FLAT = exact), through pymilvus."""
    import tempfile

    from tbps.retrieval.milvus_store import MilvusStore, lite_uri, rows_per_request

    ids = np.arange(len(emb), dtype=np.int64)
    files = [f"img{i}" for i in range(len(emb))]
    with tempfile.TemporaryDirectory(prefix="milvus_bench_") as tmp:
        gc.collect()
        before = rss_mb()
        t0 = time.perf_counter()
        store = MilvusStore(lite_uri(tmp), "bench")
        store.create(emb.shape[1])
        store.upsert(ids, emb, files, batch=rows_per_request(emb.shape[1]), replace_files=False)  # a bulk load
        store.flush()
        store.search(queries[:1], 10)  # the first search loads the segments
        total = time.perf_counter() - t0
        lat = []
        for q in queries[:latency_queries]:
            t = time.perf_counter()
            store.search(q[None], 10)
            lat.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        _, found = store.search(queries, 10)
        batch_s = time.perf_counter() - t
        mb = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
        row = {"kind": "milvus", "n": len(emb), "build_s": round(total, 2), "tune_s": 0.0, "build_total_s": round(total, 2),
               "index_mb": round(mb, 1), "rss_delta_mb": round(rss_mb() - before, 1),
               "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
               "batch_qps": round(len(queries) / batch_s, 1), "recall_at_10": round(fx.recall_at_k(found, truth), 4),
               "build_time_recall_at_10": 1.0, "milvus_index": store.describe()["index"].get("index_type", "FLAT")}
        store.drop()
        store.close()
    return row


PARAMS = ("nlist", "nprobe", "pca_dim", "k_factor", "efSearch", "hnsw_m", "milvus_index")


def to_markdown(rows: list[dict], meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# Vector search speed",
        "",
        f"Machine: {m['cpu']} ({m['cpu_usable']} usable cores, faiss threads {meta['faiss_threads']}), "
        f"{m['memory_gb']} GB RAM, Python {m['python']}, faiss {meta['faiss']}.",
        f"Embeddings: dim {meta['dim']}, one cluster per {meta['per_centre']} images (lowrank: intrinsic dimension "
        f"{meta['latent_dim']}; isotropic: {meta['dim']}), {meta['queries']} queries "
        f"({meta['latency_queries']} timed one by one with one faiss thread, as the Searcher runs them; "
        f"batch q/s with all threads), k = 10. Date: {meta['date']}, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average'])} (a shared machine: timings are noisy). "
        f"Recall target {meta['recall_target']}. Command: `{meta['command']}`.",
        "",
        "| data | gallery | index | build (s) | tune (s) | index MB | RSS +MB | p50 (ms) | p99 (ms) | batch q/s "
        "| recall@10 measured | stored | gallery+noise | params |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        params = ", ".join(f"{k} {r[k]}" for k in PARAMS if k in r) or "exact"
        noisy = f"{r['gallery_noise_recall_at_10']:.3f}" if "gallery_noise_recall_at_10" in r else ""
        kind = f"{r['requested']} -> {r['kind']}" if "requested" in r else r["kind"]
        lines.append(f"| {r.get('data', '')} | {r['n']:,} | {kind} | {r['build_s']} | {r['tune_s']} | {r['index_mb']} | "
                     f"{r['rss_delta_mb']} | {r['p50_ms']} | {r['p99_ms']} | {r['batch_qps']} | "
                     f"{r['recall_at_10']:.3f} | {r['build_time_recall_at_10']:.3f} | {noisy} | {params} |")
    lines += ["", "build = index construction (ivf: k-means training + adding; milvus: inserting through pymilvus "
                  "+ the first search); tune = measuring recall@10 against exact search at growing nprobe / "
                  "efSearch until the target is reached (done by `tbps index build` too). recall@10 measured = on "
                  "the benchmark's own queries; stored = the build-time estimate kept in the manifest (on an "
                  "independent draw of query-like vectors); gallery+noise = the estimate from noisy gallery "
                  "points at the same setting, as stored before query-like vectors were used.", ""]
    return "\n".join(lines)


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivf_pca", "hnsw", "milvus"],
                   choices=["flat", "ivf", "ivf_pca", "hnsw", "auto", "milvus"])
    p.add_argument("--hnsw-max", type=int, default=100_000, help="skip hnsw above this size (slow build)")
    p.add_argument("--milvus-max", type=int, default=100_000, help="skip Milvus Lite above this size")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--data", nargs="+", default=["lowrank", "isotropic"], choices=["lowrank", "isotropic"])
    p.add_argument("--per-centre", type=int, default=50, help="gallery images per cluster centre")
    p.add_argument("--latent-dim", type=int, default=32, help="intrinsic dimension of the lowrank data")
    p.add_argument("--spread", type=float, default=0.06, help="per-dimension noise around a centre")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--latency-queries", type=int, default=500)
    p.add_argument("--recall-target", type=float, default=fx.DEFAULT_RECALL_TARGET)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="search_speed")
    args = p.parse_args(argv)

    import faiss

    rows = []
    for data in args.data:
        for n in args.sizes:
            t = time.perf_counter()
            emb, queries, calib = make_data(data, n, args)
            truth = fx.exact_topk(emb, np.arange(n), queries, 10)
            print(f"{data} n={n:,}: data + exact ground truth in {time.perf_counter() - t:.1f} s", flush=True)
            for kind in args.kinds:
                limit = {"hnsw": args.hnsw_max, "milvus": args.milvus_max}.get(kind)
                if limit is not None and n > limit:
                    print(f"  {kind} skipped at n={n:,} (> --{kind}-max {limit:,})", flush=True)
                    continue
                if kind == "milvus":
                    row = {"data": data, **bench_milvus(emb, queries, truth, args.latency_queries)}
                else:
                    row = {"data": data, **bench(kind, emb, queries, truth, args.latency_queries, args.recall_target,
                                                 calib)}
                rows.append(row)
                print("  " + json.dumps(row), flush=True)
            del emb
            gc.collect()
    meta = {"machine": machine_info(), "faiss": faiss.__version__, "milvus_lite": _version("milvus-lite"),
            "pymilvus": _version("pymilvus"), "faiss_threads": faiss.omp_get_max_threads(),
            "dim": args.dim, "per_centre": args.per_centre, "latent_dim": args.latent_dim, "spread": args.spread,
            "queries": args.queries,
            "latency_queries": args.latency_queries, "recall_target": args.recall_target,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average": os.getloadavg(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{args.name}.json", {"meta": meta, "rows": rows})
    atomic_write_text(out / f"{args.name}.md", to_markdown(rows, meta))
    print(to_markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
