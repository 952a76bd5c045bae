"""Ranking-metric speed and memory at the test sizes of CUHK-PEDES and ICFG-PEDES.

Compares `tbps.evaluation.rank_metrics` (chunked, sort-free: each positive's rank is counted
directly) with `reference_rank_metrics` (one full stable argsort of the Q x G matrix) on the same
similarity matrix, and checks that both give identical numbers.

Sizes (queries x gallery, test identities): CUHK-PEDES 6,156 x 3,074 (1,000 ids), ICFG-PEDES
19,848 x 19,848 (1,000 ids). The similarity is built from noisy per-identity 256-d features, so
rankings look like a trained model's (most positives near the top, no exact ties).

Each (size, implementation) runs in a fresh process. Extra memory: the CUDA allocator's peak above
what was allocated before the call on a GPU; on a CPU, the process's peak RSS above its RSS
before the call (the similarity matrix itself is not counted).

    python benchmarks/eval_speed.py --device cpu
    python benchmarks/eval_speed.py --device cuda

Writes benchmarks/results/eval_speed_<device>.{md,json} with the machine description.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from _ablation import repo_relative
from _child import child_main, run_child

SIZES = {"cuhk": ("CUHK-PEDES", 6156, 3074, 1000), "icfg": ("ICFG-PEDES", 19848, 19848, 1000)}
ROOT = Path(__file__).resolve().parent.parent


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_problem(q: int, g: int, ids: int, device, dim: int = 256, seed: int = 0):
    """(similarity [q, g] float32, query pids, gallery pids), built row chunk by row chunk."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    qp = torch.arange(q) % ids
    gp = torch.arange(g) % ids
    qp, gp = qp[torch.randperm(q, generator=gen)], gp[torch.randperm(g, generator=gen)]
    centers = torch.randn(ids, dim, generator=gen)
    qf = F.normalize(centers[qp] + 2.2 * torch.randn(q, dim, generator=gen), dim=1).to(device)
    gf = F.normalize(centers[gp] + 2.2 * torch.randn(g, dim, generator=gen), dim=1).to(device)
    sim = torch.empty(q, g, device=device)
    for i in range(0, q, 2048):
        sim[i:i + 2048] = qf[i:i + 2048] @ gf.t()
    return sim, qp.to(device), gp.to(device)


def _child(spec: dict) -> dict:
    import torch

    from tbps.evaluation import rank_metrics, reference_rank_metrics

    device = torch.device(spec["device"])
    name, q, g, ids = SIZES[spec["size"]]
    sim, qp, gp = make_problem(q, g, ids, device)
    fn = rank_metrics if spec["impl"] == "chunked" else reference_rank_metrics
    times, metrics, extra = [], None, 0
    rss_before = _rss_bytes()  # CPU: peak RSS over all runs above the RSS before the first one
    for _ in range(spec["repeat"]):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        metrics = fn(sim, qp, gp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            extra = max(extra, torch.cuda.max_memory_allocated(device) - before)
        times.append(time.perf_counter() - t0)
    if device.type != "cuda":
        extra = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"size": spec["size"], "dataset": name, "queries": q, "gallery": g, "impl": spec["impl"],
            "seconds": min(times), "all_seconds": times, "extra_memory_mib": max(0, extra) / 2**20,
            "similarity_mib": sim.numel() * sim.element_size() / 2**20, "metrics": metrics}


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two metric dicts (inf if their keys differ)."""
    if a.keys() != b.keys():
        return float("inf")
    return max(abs(float(a[k]) - float(b[k])) for k in a)


def _markdown(rows: list[dict], info: dict, device: str, load_before: float, repeat: int) -> str:
    gpu = info.get("gpu")
    where = gpu if gpu and device.startswith("cuda") else f"{info['cpu']} ({info['cpu_usable']} usable cores)"
    lines = [f"# Metric computation speed: {device}", "",
             f"Machine: {where}; torch {info['torch']}; {time.strftime('%Y-%m-%d')}; load average before the run "
             f"{load_before:.1f}. Best of {repeat} runs; extra memory excludes the similarity matrix itself.", "",
             "*identical*: Rank-k equal, mAP and mINP equal to 1e-9 percentage points (float64 sums in a different "
             "order differ in the last bits).", "",
             "| test set | queries x gallery | implementation | time (s) | extra memory (MiB) | R1 | mAP | mINP | identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_size: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["impl"]] = r
    for size, impls in by_size.items():
        same = None
        if "chunked" in impls and "argsort" in impls:
            same = max_difference(impls["chunked"]["metrics"], impls["argsort"]["metrics"]) <= 1e-9
        for impl in ("chunked", "argsort"):
            r = impls.get(impl)
            if r is None:
                continue
            label = "rank_metrics (chunked, sort-free)" if impl == "chunked" else "full argsort (reference)"
            m = r["metrics"]
            lines.append(f"| {r['dataset']} | {r['queries']:,} x {r['gallery']:,} | {label} | {r['seconds']:.2f} | "
                         f"{r['extra_memory_mib']:.0f} | {m['R1']:.2f} | {m['mAP']:.4f} | {m['mINP']:.4f} | "
                         f"{'yes' if same else ('no' if same is False else '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(_child, args.child)
    from tbps.utils import atomic_write_json, atomic_write_text, machine_info

    load_before = os.getloadavg()[0]
    rows = []
    for size in args.sizes:
        for impl in ("chunked", "argsort"):
            spec = {"size": size, "impl": impl, "device": args.device, "repeat": args.repeat}
            row, err = run_child(__file__, spec)
            if row is None:
                raise SystemExit(f"{size} {impl} failed:\n{err[-3000:]}")
            rows.append(row)
            print(f"{size} {impl:8s}: {row['seconds']:.2f} s, +{row['extra_memory_mib']:.0f} MiB, "
                  f"R1 {row['metrics']['R1']:.3f} mAP {row['metrics']['mAP']:.3f}")
    for size in args.sizes:
        a, b = [r["metrics"] for r in rows if r["size"] == size]
        if max_difference(a, b) > 1e-9 or any(a[k] != b[k] for k in a if k.startswith("R")):
            raise SystemExit(f"{size}: the two implementations disagree: {a} vs {b}")
    info = machine_info()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"eval_speed_{'cuda' if args.device.startswith('cuda') else 'cpu'}"
    atomic_write_json(out / f"{name}.json", {"machine": info, "args": repo_relative(vars(args)), "results": rows})
    text = _markdown(rows, info, args.device, load_before, args.repeat)
    atomic_write_text(out / f"{name}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
