"""Shared runner for the ablation benchmarks (ablate_cada.py, ablate_uca.py).

Each variant is a config plus overrides. By default the tiny configs fine-tune from the shipped
foundations (irra_tiny, cada_tiny, uca_tiny at their own epochs, issue 12); `--scratch` runs the
same variants on the from-scratch configs (`<config>_scratch`, 4 epochs, the route before). Every
(variant, seed) run trains on the embedded benchmark's train split, selects its checkpoint on val
Rank-1 (never test), and is then evaluated once on the test split. Finished runs are skipped, so a
killed benchmark resumes where it stopped. The table reports mean and standard deviation over seeds.

The results JSON keeps `runs[variant][i]["metrics"][task]["R1"]`; each run also records its
starting checkpoint as `"init"` (the config's `backbone.pretrained`, null from scratch) and, when
trained, `"init_sha256"`; `"answers"` holds the papers' questions answered from the runs. Paths
under the repository are written relative to it, so results files do not name the machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
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
REPO = ROOT.parent
CONFIG_DIR = REPO / "src" / "tbps" / "configs"

SCRATCH_EPOCHS = 4  # the from-scratch grids' budget (about 5 minutes per run on 2 CPU cores)
Variant = tuple[str, list[str]]  # (config name, overrides)
Extra = Callable[[dict[str, Any]], dict[str, float]]  # metrics["extra"] -> columns
Questions = Callable[[dict[str, list[dict[str, Any]]]], list[dict[str, Any]]]  # runs -> answered questions


def parse_args(name: str, default_seeds: int = 3, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"{name}: train each variant with several seeds, report test mean/std")
    p.add_argument("--scratch", action="store_true",
                   help="train from random weights (the *_tiny_scratch configs) instead of fine-tuning from the "
                        "shipped foundation (the *_tiny configs, the default)")
    p.add_argument("--seeds", type=int, default=default_seeds,
                   help=f"seeds 0..N-1 per variant (default {default_seeds})")
    p.add_argument("--variants", nargs="*", help="run only these variants (default all)")
    p.add_argument("--train-seeds", type=int, nargs="*",
                   help="train only these seeds now; the table still shows every finished seed < --seeds "
                        "(lets two processes share the grid: `--train-seeds 0` beside `--train-seeds 1 2`)")
    p.add_argument("--data-root", default=str(ROOT / "data" / "synth-small"),
                   help="embedded benchmark folder (rendered with `tbps synth --preset small` when missing)")
    p.add_argument("--epochs", type=int, default=None,
                   help="the budget: train.epochs for every variant; 0 keeps each config's own (default: 0 when "
                        f"fine-tuning, i.e. the tiny configs' own budget; {SCRATCH_EPOCHS} with --scratch, about 5 "
                        "minutes per run on 2 CPU cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--runs", help="where the runs are kept (resumable; default benchmarks/runs/ablations-ft-eN "
                                  "fine-tuned, benchmarks/runs/ablations-eN from scratch, N = epochs or 'cfg'; shared "
                                  "by both ablations so `irra` trains once)")
    p.add_argument("--out", help=f"results path without extension (default benchmarks/results/{name}, "
                                 f"{name}_scratch with --scratch)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite <out>.md and <out>.json from the runs stored in <out>.json (today's "
                        "table columns, repo-relative paths, each run's init)")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = SCRATCH_EPOCHS if args.scratch else 0
    if args.runs is None:
        args.runs = str(ROOT / "runs" / f"ablations-{'' if args.scratch else 'ft-'}e{args.epochs or 'cfg'}")
    if args.out is None:
        args.out = str(ROOT / "results" / (f"{name}_scratch" if args.scratch else name))
    return args


def routed(variants: dict[str, Variant], scratch: bool) -> dict[str, Variant]:
    """The variants on the chosen route: with `scratch`, each config that has a `<config>_scratch`
    twin (the tiny configs) is replaced by it; the overrides stay."""
    if not scratch:
        return dict(variants)
    return {v: (f"{c}_scratch" if (CONFIG_DIR / f"{c}_scratch.yaml").is_file() else c, o)
            for v, (c, o) in variants.items()}


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


def repo_relative(x: Any, root: str | Path | None = None) -> Any:
    """Every absolute path under the repository `root` (default: this one), alone or as the value
    of a `key=path` override, rewritten relative to it, recursively through dicts and lists."""
    if isinstance(x, dict):
        return {k: repo_relative(v, root) for k, v in x.items()}
    if isinstance(x, list):
        return [repo_relative(v, root) for v in x]
    if not isinstance(x, str):
        return x
    key, sep, value = x.partition("=") if "=" in x and not x.startswith("/") else ("", "", x)
    if os.path.isabs(value):
        base = Path(os.path.abspath(root or REPO))
        path = Path(os.path.abspath(value))
        if path == base or base in path.parents:
            return f"{key}{sep}{path.relative_to(base).as_posix() or '.'}"
    return x


def starting_checkpoint(cfg: dict[str, Any]) -> str | None:
    """The weights a run starts from (`backbone.pretrained`: a path or `foundation:<name>`), None from scratch."""
    init = get(cfg, "backbone.pretrained")
    return None if init in (None, "") else str(init)


def checkpoint_sha256(init: str | None) -> str | None:
    """SHA-256 of the starting weights' file (a foundation resolved to its file), None when there is
    none: `foundation:<name>` names whichever version is shipped, the hash says which one a run used."""
    from tbps.foundation import resolve

    if init is None:
        return None
    path = Path(resolve(init, "backbone.pretrained"))
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_one(config: str, overrides: list[str], run_dir: Path, progress: bool) -> dict[str, Any]:
    """Train (unless finished) and evaluate on test; the result is cached in run_dir/test.json."""
    result_file = run_dir / "test.json"
    cfg = load_experiment_config(config, overrides, search_dirs=[CONFIG_DIR])
    check_same_config(cfg, run_dir)
    if result_file.is_file():
        return {**json.loads(result_file.read_text()), "init": starting_checkpoint(cfg)}
    init_sha256 = checkpoint_sha256(starting_checkpoint(cfg))  # before training: the weights it starts from
    t0 = time.time()
    summary = train(cfg, run_dir, resume=(run_dir / "checkpoints" / "last").exists(), progress=progress)
    train_s = time.time() - t0
    metrics, info = evaluate_run(run_dir, split="test", progress=progress, report_dir=run_dir / "report")
    result = {"metrics": metrics, "best_val_r1": summary.get("best_val_r1"), "best_epoch": summary.get("best_epoch"),
              "train_seconds": train_s, "pairs_per_s": summary.get("pairs_per_s"), "checkpoint": info["checkpoint"],
              "init": starting_checkpoint(cfg), "init_sha256": init_sha256}
    atomic_write_json(result_file, result)
    return result


def _fmt(xs: list[float]) -> str:
    return ".2f" if max(abs(x) for x in xs) >= 0.01 else ".2e"  # uncertainties can be ~1e-4


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    fmt = _fmt(xs)
    if len(xs) == 1:
        return f"{xs[0]:{fmt}}"
    return f"{statistics.mean(xs):{fmt}} ± {statistics.stdev(xs):{fmt}}"


def run_ablation(name: str, variants: dict[str, Variant], args: argparse.Namespace,
                 tasks: list[str], extra: Extra | None = None, note: str = "",
                 questions: Questions | None = None) -> dict[str, Any]:
    """Run every selected variant x seed on the chosen route, then write `<out>.md` and `<out>.json`
    (with the paper questions' answers when `questions` is given)."""
    variants = routed(variants, getattr(args, "scratch", False))
    chosen = args.variants or list(variants)
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(variants)}")
    if getattr(args, "report_only", False):
        return _rewrite_stored(name, variants, chosen, args, tasks, extra, note, questions)
    ensure_data(args.data_root)
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
                res["init"] = starting_checkpoint(load_experiment_config(run_dir / "config.yaml"))
            else:
                continue
            rows.setdefault(variant, []).append(res)
    payload = repo_relative({
        "benchmark": name, "route": "scratch" if getattr(args, "scratch", False) else "fine-tuned",
        "machine": machine_info(), "seeds": args.seeds, "common_overrides": common,
        "variants": {v: {"config": variants[v][0], "overrides": variants[v][1]} for v in chosen},
        "runs": rows, "note": note})
    return _write_results(payload, args.out, tasks, extra, questions)


def _rewrite_stored(name: str, variants: dict[str, Variant], chosen: list[str], args: argparse.Namespace,
                    tasks: list[str], extra: Extra | None, note: str, questions: Questions | None) -> dict[str, Any]:
    """`--report-only`: the stored results file in today's form, nothing trained. Paths are made
    relative to the repository that ran them (the folder above its `benchmarks/`)."""
    stored_file = Path(f"{args.out}.json")
    if not stored_file.is_file():
        raise SystemExit(f"--report-only: no stored results at {stored_file}")
    stored = json.loads(stored_file.read_text())
    data_root = next((o.partition("=")[2] for o in stored.get("common_overrides", []) if o.startswith("data.root=")), "")
    root = data_root.split("/benchmarks/")[0] if "/benchmarks/" in data_root else None
    rows = {v: rs for v, rs in stored["runs"].items() if v in chosen}
    for v, rs in rows.items():
        init = starting_checkpoint(load_experiment_config(variants[v][0], variants[v][1], search_dirs=[CONFIG_DIR]))
        for r in rs:
            r.setdefault("init", init)
    route = stored.get("route") or ("scratch" if getattr(args, "scratch", False) else "fine-tuned")
    payload = repo_relative({**stored, "benchmark": name, "route": route, "note": note or stored.get("note", ""),
                             "runs": rows, "variants": {v: {"config": variants[v][0], "overrides": variants[v][1]} for v in rows}},
                            root)
    return _write_results(payload, args.out, tasks, extra, questions)


def _write_results(payload: dict[str, Any], out: str, tasks: list[str], extra: Extra | None,
                   questions: Questions | None = None) -> dict[str, Any]:
    """`<out>.json` (the payload) and `<out>.md` (machine, seeds, overrides, the table, the answers)."""
    table = _table(payload["runs"], tasks, extra)
    if questions is not None:
        payload["answers"] = questions(payload["runs"])
        table += "\n\n" + answers_text(payload["answers"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(f"{out}.json"), payload)
    m, seeds = payload["machine"], payload["seeds"]
    device = m.get("gpu") or f"CPU ({m.get('cpu', '?')}, {m.get('cpu_usable', '?')} cores, {m.get('torch_threads')} threads)"
    inits = sorted({str(r.get("init")) for rs in payload["runs"].values() for r in rs if r.get("init")})
    start = ", ".join(f"`{i}`" for i in inits) if inits else "none (trained from random weights)"
    header = (f"# {payload['benchmark']}\n\nStarting checkpoints (`init`): {start}.\n"
              f"Machine: {device}, torch {m.get('torch', '?')}, {m.get('memory_gb')} GB RAM. "
              f"Seeds 0..{seeds - 1} (the seeds column counts the finished ones). Test split; each run's checkpoint chosen on val Rank-1.\nCommon overrides: `{' '.join(payload['common_overrides'])}`\n\n{payload['note']}\n\n")
    atomic_write_text(Path(f"{out}.md"), header + table + "\n")
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


# --------------------------------------------------------------------------- the papers' questions
def values(runs: dict[str, list[dict[str, Any]]], variant: str, pick: Callable[[dict[str, Any]], Any]) -> list[float]:
    """`pick(metrics)` over the finished seeds of `variant` (missing or NaN values left out)."""
    out = []
    for r in runs.get(variant, []):
        try:
            x = pick(r["metrics"])
        except (KeyError, TypeError):
            continue
        if isinstance(x, (int, float)) and x == x:
            out.append(float(x))
    return out


def _ms(xs: list[float]) -> str:
    return _mean_std(xs) + f" (n={len(xs)})"


def compare(question: str, a_label: str, a: list[float], b_label: str, b: list[float]) -> dict[str, Any]:
    """Is the mean of `a` above the mean of `b`? "yes"/"no", or "not measured" when a side has no run;
    a difference within one standard deviation of either side is called not conclusive."""
    if not a or not b:
        return {"question": question, "answer": "not measured",
                "evidence": f"{a_label}: {_ms(a)}; {b_label}: {_ms(b)}"}
    diff = statistics.mean(a) - statistics.mean(b)
    spread = max(statistics.stdev(xs) if len(xs) > 1 else 0.0 for xs in (a, b))
    answer = "yes" if diff > 0 else "no"
    return {"question": question, "answer": answer, "conclusive": abs(diff) > spread,
            "difference": diff, "evidence": f"{a_label} {_ms(a)} vs {b_label} {_ms(b)}: {diff:+{_fmt([diff, *a, *b])}}"
                                             + ("" if abs(diff) > spread else ", within one std (not conclusive)")}


def below_zero(question: str, label: str, xs: list[float]) -> dict[str, Any]:
    """Is the mean of `xs` below 0, and in how many seeds."""
    if not xs:
        return {"question": question, "answer": "not measured", "evidence": f"{label}: no run"}
    neg = sum(x < 0 for x in xs)
    return {"question": question, "answer": "yes" if statistics.mean(xs) < 0 else "no", "conclusive": neg in (0, len(xs)),
            "evidence": f"{label} {_ms(xs)}; below 0 in {neg} of {len(xs)} seeds"}


def answers_text(answers: list[dict[str, Any]]) -> str:
    lines = ["## The papers' questions (test split, mean ± std over seeds)", ""]
    lines += [f"- {a['question']} **{a['answer']}**: {a['evidence']}" for a in answers]
    return "\n".join(lines)
