"""Shared runner for the ablation benchmarks (ablate_cada.py, ablate_uca.py).

Each variant is a config plus overrides. Every (variant, seed) run trains on the embedded
benchmark's train split, selects its checkpoint on val Rank-1 (never test), and is then
evaluated once on the test split. Finished runs are skipped, so a killed benchmark resumes
where it stopped. The table reports mean and standard deviation over seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from tbps.config import flatten_keys, get
from tbps.engine.experiment import load_experiment_config
from tbps.engine.runs import evaluate_run
from tbps.engine.trainer import train
from tbps.utils import atomic_write_json, atomic_write_text, machine_info

ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT.parent / "src" / "tbps" / "configs"

DEFAULT_EPOCHS = 4
Variant = tuple[str, list[str]]  # (config name, overrides)
Extra = Callable[[dict[str, Any]], dict[str, float]]  # metrics["extra"] -> columns


def parse_args(name: str, default_seeds: int = 3) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"{name}: train each variant with several seeds, report test mean/std")
    p.add_argument("--seeds", type=int, default=default_seeds, help="seeds 0..N-1 per variant")
    p.add_argument("--variants", nargs="*", help="run only these variants (default all)")
    p.add_argument("--train-seeds", type=int, nargs="*",
                   help="train only these seeds now; the table still shows every finished seed < --seeds "
                        "(lets two processes share the grid: `--train-seeds 0` beside `--train-seeds 1 2`)")
    p.add_argument("--data-root", default=str(ROOT / "data" / "synth-small"),
                   help="embedded benchmark folder (rendered with `tbps synth --preset small` when missing)")
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help=f"train.epochs for every variant (default {DEFAULT_EPOCHS}: about 5 minutes per run on 2 "
                        f"CPU cores; 0 keeps each config's own, 12)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--runs", help="where the runs are kept (resumable; default benchmarks/runs/ablations-eN for N "
                                  "epochs, shared by both ablations so `irra` trains once)")
    p.add_argument("--out", default=str(ROOT / "results" / name), help="results path without extension")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.runs is None:
        args.runs = str(ROOT / "runs" / f"ablations-e{args.epochs or 'cfg'}")
    return args


def ensure_data(root: str) -> None:
    """Render the `small` preset into root, or refuse a folder rendered with other settings."""
    from tbps.synth import generate, is_current

    if is_current(root, preset="small", seed=0):
        return
    if (Path(root) / "reid_raw.json").is_file():
        raise SystemExit(f"{root} holds a benchmark rendered with another preset, seed or synth version than "
                         f"the current `small` preset (see its meta.json); delete the folder or pass --data-root")
    print(f"rendering the embedded benchmark into {root}")
    generate(root, preset="small", seed=0, progress=True)


def _leaves(cfg: dict[str, Any]) -> dict[str, Any]:
    """Dotted key -> value for every non-mapping entry of a config."""
    values = {k: get(cfg, k) for k in flatten_keys(cfg)}
    return {k: v for k, v in values.items() if not isinstance(v, dict)}


def check_same_config(cfg: dict[str, Any], run_dir: Path) -> None:
    """Refuse to reuse or resume a cached run that was trained with another config."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old, new = _leaves(load_experiment_config(saved)), _leaves(cfg)
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k, "<absent>") != new.get(k, "<absent>"))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in diff[:5])
        raise SystemExit(f"{run_dir} was trained with another config ({shown}{', ...' if len(diff) > 5 else ''}); "
                         f"delete it or pass another --runs folder")


def run_one(config: str, overrides: list[str], run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train (unless finished) and evaluate on test; the result is cached in run_dir/test.json."""
    result_file = run_dir / "test.json"
    cfg = load_experiment_config(config, overrides, search_dirs=[CONFIG_DIR])
    check_same_config(cfg, run_dir)
    if result_file.is_file():
        return json.loads(result_file.read_text())
    t0 = time.time()
    summary = train(cfg, run_dir, resume=(run_dir / "checkpoints" / "last").exists(), progress=progress)
    train_s = time.time() - t0
    metrics, info = evaluate_run(run_dir, split="test", progress=progress, report_dir=run_dir / "report")
    result = {"metrics": metrics, "best_val_r1": summary.get("best_val_r1"), "best_epoch": summary.get("best_epoch"),
              "train_seconds": train_s, "pairs_per_s": summary.get("pairs_per_s"), "checkpoint": info["checkpoint"]}
    atomic_write_json(result_file, result)
    return result


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    fmt = ".2f" if max(abs(x) for x in xs) >= 0.01 else ".2e"  # uncertainties can be ~1e-4
    if len(xs) == 1:
        return f"{xs[0]:{fmt}}"
    return f"{statistics.mean(xs):{fmt}} ± {statistics.stdev(xs):{fmt}}"


def run_ablation(name: str, variants: dict[str, Variant], args: argparse.Namespace,
                 tasks: list[str], extra: Extra | None = None, note: str = "") -> dict[str, Any]:
    """Run every selected variant x seed, then write `<out>.md` and `<out>.json`."""
    ensure_data(args.data_root)
    chosen = args.variants or list(variants)
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(variants)}")
    common = [f"data.root={args.data_root}", *args.set] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    rows: dict[str, list[dict[str, Any]]] = {}
    train_seeds = range(args.seeds) if args.train_seeds is None else args.train_seeds
    for variant in chosen:
        config, overrides = variants[variant]
        for seed in range(args.seeds):
            run_dir = Path(args.runs) / variant / f"seed{seed}"
            if seed in train_seeds:
                print(f"== {variant} seed {seed} ({config} {' '.join(overrides)})", flush=True)
                res = run_one(config, [*common, *overrides, f"seed={seed}"], run_dir, not args.quiet)
            elif (run_dir / "test.json").is_file():
                res = json.loads((run_dir / "test.json").read_text())
            else:
                continue
            rows.setdefault(variant, []).append(res)
    table = _table(rows, tasks, extra)
    payload = {"benchmark": name, "machine": machine_info(), "seeds": args.seeds, "common_overrides": common,
               "variants": {v: {"config": variants[v][0], "overrides": variants[v][1]} for v in chosen},
               "runs": rows, "note": note}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(f"{args.out}.json"), payload)
    m = payload["machine"]
    device = m.get("gpu") or f"CPU ({m.get('cpu', '?')}, {m.get('cpu_usable', '?')} cores, {m.get('torch_threads')} threads)"
    header = (f"# {name}\n\nMachine: {device}, torch {m.get('torch', '?')}, {m.get('memory_gb')} GB RAM. "
              f"Seeds 0..{args.seeds - 1} (the seeds column counts the finished ones). Test split; each run's checkpoint chosen on val Rank-1.\nCommon overrides: `{' '.join(common)}`\n\n{note}\n\n")
    atomic_write_text(Path(f"{args.out}.md"), header + table + "\n")
    print(table)
    return payload


def _table(rows: dict[str, list[dict[str, Any]]], tasks: list[str], extra: Extra | None) -> str:
    extra_cols = sorted({k for rs in rows.values() for r in rs for k in (extra(r["metrics"]) if extra else {})})
    head = ["variant", "seeds"] + [f"{t} {m}" for t in tasks for m in ("R1", "mAP")] + extra_cols + ["min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, rs in rows.items():
        cells = [variant, str(len(rs))]
        for t in tasks:
            for m in ("R1", "mAP"):
                cells.append(_mean_std([r["metrics"][t][m] for r in rs if t in r["metrics"]]))
        ex = [extra(r["metrics"]) if extra else {} for r in rs]
        for c in extra_cols:
            cells.append(_mean_std([e[c] for e in ex if c in e and e[c] == e[c]]))
        cells.append(f"{statistics.mean(r['train_seconds'] for r in rs) / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
