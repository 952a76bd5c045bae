"""Time to accuracy: IRRA fine-tuned from the tiny CLIP foundation (irra_tiny) vs from scratch
(irra_tiny_scratch) on the same benchmark preset and seed, validation Rank-1 against training step
and wall seconds (issue 12). Model selection and the curves use the validation split only.

    python benchmarks/time_to_accuracy.py                       # trains both (each config's own epochs)
    python benchmarks/time_to_accuracy.py --epochs 6 --seed 1   # both with 6 epochs, seed 1
    python benchmarks/time_to_accuracy.py --runs runs/ft runs/scratch   # reuse finished runs' log.jsonl

Writes benchmarks/results/time_to_accuracy.{json,md,png}. The figure needs matplotlib, an optional
extra: `pip install -e '.[bench]'` (it is also in the `test` extra that `make test` installs).
Wall seconds of a point are the time from the run's first training step to that validation
(validation passes included), so they compare only between runs made on the same machine, which
the JSON records; a run resumed after a kill counts its pause too and is marked "resumed".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _ablation import ROOT, ensure_data, repo_relative, starting_checkpoint
from tbps.engine.experiment import load_experiment_config
from tbps.utils import atomic_write_json, atomic_write_text, machine_info

ROUTES = {"fine_tuned": "irra_tiny", "scratch": "irra_tiny_scratch"}
LABELS = {"fine_tuned": "fine-tuned from foundation:tiny-clip (irra_tiny)",
          "scratch": "from scratch (irra_tiny_scratch)"}
FRACTIONS = (0.5, 0.9, 1.0)  # of the from-scratch run's best validation Rank-1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="validation Rank-1 vs step and wall seconds, IRRA fine-tuned vs scratch")
    p.add_argument("--runs", nargs=2, metavar=("FT_RUN", "SCRATCH_RUN"),
                   help="reuse these finished run folders (their log.jsonl and config.yaml) instead of training")
    p.add_argument("--data-root", default=str(ROOT / "data" / "synth-small"),
                   help="embedded benchmark (the `small` preset, rendered when missing)")
    p.add_argument("--seed", type=int, default=0, help="the same seed for both runs")
    p.add_argument("--epochs", type=int, default=0, help="train.epochs for both (default 0: each config's own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for both runs")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "time_to_accuracy"), help="where trained runs are kept")
    p.add_argument("--out", default=str(ROOT / "results" / "time_to_accuracy"), help="results path without extension")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def read_curve(run_dir: Path) -> dict[str, Any]:
    """The validation curve of a run folder's log.jsonl: step, epoch, wall seconds and val Rank-1."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"{run_dir}: no log.jsonl (not a run folder of `tbps train`)")
    records = []
    for n, line in enumerate(log.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise SystemExit(f"{log}: line {n} is not JSON") from None
    train = [r for r in records if "step" in r and "split" not in r and "pairs_per_s" in r]
    val = [r for r in records if r.get("split") == "val" and "t2i/R1" in r]
    if not train or not val:
        raise SystemExit(f"{log}: no training or validation records (t2i/R1) to draw a curve from")
    cfg = load_experiment_config(run_dir / "config.yaml")
    # the first logged step came `step` steps after the start: extrapolate back at its own rate
    first = train[0]
    start = first["time"] - first["step"] * int(cfg["train"]["batch_size"]) / max(first["pairs_per_s"], 1e-9)
    steps = [r["step"] for r in train]
    points = [{"step": r["step"], "epoch": r["epoch"], "seconds": round(r["time"] - start, 1),
               "val_R1": r["t2i/R1"]} for r in val]
    return {"run": str(run_dir.resolve()), "init": starting_checkpoint(cfg), "seed": cfg.get("seed"),
            "data_root": cfg["data"]["root"], "batch_size": cfg["train"]["batch_size"],
            "resumed": any(b <= a for a, b in zip(steps, steps[1:])),
            "best_val_R1": max(p["val_R1"] for p in points), "points": points}


def first_reaching(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first validation point at or above `target` Rank-1, None if the run never gets there."""
    return next((p for p in points if p["val_R1"] >= target), None)


def summarise(curves: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps and seconds each route needs to reach fractions of the from-scratch run's best."""
    best = curves["scratch"]["best_val_R1"]
    rows = []
    for frac in FRACTIONS:
        target = frac * best
        hit = {route: first_reaching(c["points"], target) for route, c in curves.items()}
        ft, sc = hit["fine_tuned"], hit["scratch"]
        rows.append({"target_val_R1": round(target, 2), "fraction_of_scratch_best": frac,
                     **{f"{route}_{k}": (h[k] if h else None) for route, h in hit.items() for k in ("step", "seconds")},
                     "step_ratio": (sc["step"] / ft["step"]) if ft and sc else None,
                     "seconds_ratio": (sc["seconds"] / ft["seconds"]) if ft and sc and ft["seconds"] > 0 else None})
    return rows


def write_table(payload: dict[str, Any]) -> str:
    c, s = payload["curves"], payload["summary"]
    lines = ["# time to accuracy: IRRA fine-tuned vs from scratch\n",
             f"Machine: {payload['machine'].get('cpu', '?')} ({payload['machine'].get('cpu_usable', '?')} cores), "
             f"torch {payload['machine'].get('torch', '?')}. Seed {payload['seed']}, data `{payload['data_root']}`, "
             "validation split only.\n",
             "| route | init | best val R1 | steps | resumed |", "|---|---|---|---|---|"]
    for route, curve in c.items():
        lines.append(f"| {LABELS[route]} | {curve['init'] or '-'} | {curve['best_val_R1']:.2f} | "
                     f"{curve['points'][-1]['step']} | {'yes' if curve['resumed'] else 'no'} |")
    fmt = (lambda x, f=".0f": "never" if x is None else f"{x:{f}}")
    lines += ["", "Steps and wall seconds to reach a share of the from-scratch run's best validation Rank-1:", "",
              "| target val R1 | fine-tuned step | fine-tuned s | scratch step | scratch s | step ratio | seconds ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in s:
        lines.append(f"| {r['target_val_R1']:.2f} ({r['fraction_of_scratch_best']:.0%} of scratch best) | "
                     f"{fmt(r['fine_tuned_step'])} | {fmt(r['fine_tuned_seconds'])} | {fmt(r['scratch_step'])} | "
                     f"{fmt(r['scratch_seconds'])} | {fmt(r['step_ratio'], '.1f')} | {fmt(r['seconds_ratio'], '.1f')} |")
    lines += ["", "Validation Rank-1 per evaluation:", "", "| route | step | epoch | seconds | val R1 |", "|---|---|---|---|---|"]
    for route, curve in c.items():
        lines += [f"| {route} | {p['step']} | {p['epoch']} | {p['seconds']:.0f} | {p['val_R1']:.2f} |"
                  for p in curve["points"]]
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """Two panels: validation Rank-1 against training step and against wall seconds."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the figure needs matplotlib: pip install -e '.[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for route, curve in curves.items():
        for ax, x in zip(axes, ("step", "seconds")):
            ax.plot([p[x] for p in curve["points"]], [p["val_R1"] for p in curve["points"]], marker="o",
                    label=LABELS[route])
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall seconds (validation included)")
    axes[0].set_ylabel("validation Rank-1 (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("IRRA on the embedded benchmark: fine-tuned from the foundation vs from scratch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def train_routes(args: argparse.Namespace) -> dict[str, Path]:
    """Train (or resume) both routes on the same data and seed; finished runs are kept and reused."""
    from tbps.engine.trainer import train

    ensure_data(args.data_root)
    common = [f"data.root={args.data_root}", f"seed={args.seed}", *args.set,
              *([f"train.epochs={args.epochs}"] if args.epochs else [])]
    runs = {}
    for route, config in ROUTES.items():
        run_dir = Path(args.runs_dir) / f"{route}-seed{args.seed}"
        if not _finished(run_dir):
            print(f"== {route} ({config}) into {run_dir}", flush=True)
            train(load_experiment_config(config, common), run_dir, resume=(run_dir / "checkpoints" / "last").exists(),
                  progress=not args.quiet)
        runs[route] = run_dir
    return runs


def _finished(run_dir: Path) -> bool:
    """The run's log ends with the trainer's summary record."""
    log = run_dir / "log.jsonl"
    return log.is_file() and any('"summary"' in line for line in log.read_text().splitlines())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs = dict(zip(ROUTES, map(Path, args.runs))) if args.runs else train_routes(args)
    curves = {route: read_curve(run) for route, run in runs.items()}
    seeds = {c["seed"] for c in curves.values()}
    roots = {c["data_root"] for c in curves.values()}
    if len(seeds) > 1 or len(roots) > 1:
        print(f"warning: the two runs differ in seed {sorted(map(str, seeds))} or data {sorted(roots)}")
    out = {ext: Path(f"{args.out}.{ext}") for ext in ("json", "md", "png")}
    payload = repo_relative({"benchmark": "time_to_accuracy", "machine": machine_info(),
                             "machine_note": "the machine that ran this script; with --runs, the runs are "
                                             "assumed to come from it (their wall seconds compare only then)",
                             "seed": curves["scratch"]["seed"], "data_root": curves["scratch"]["data_root"],
                             "configs": ROUTES, "curves": curves, "summary": summarise(curves),
                             "figure": str(out["png"].resolve())})
    plot(curves, out["png"])
    atomic_write_json(out["json"], payload)
    table = write_table(payload)
    atomic_write_text(out["md"], table)
    print(table)
    return payload


if __name__ == "__main__":
    main()
