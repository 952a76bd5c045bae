"""Ship a foundation export into the package: `tbps foundation ship EXPORT --name tiny-clip --run RUN`.

Writes `foundation/<name>/` (see tbps.foundation) from an export of `tbps pretrain --export`:
`model.safetensors` in half precision when that changes no measured result, else in full precision
(said so in the card), the tokenizer, and the model card (`card.json` + `README.md`): corpus and
pretraining command, seed, steps, epochs, wall time, machine, zero-shot validation Rank-1 per epoch
from the run's log, the zero-shot validation Rank-1 of the fp32 export and of the fp16 file measured
now through the fine-tuning model (the file read by `backbone.pretrained`, as a fine-tuning run
reads it), file sizes and SHA-256. Every file must stay within `MAX_FILE_BYTES` (they live in git).
The folder is written beside the destination and renamed into place: a failed ship leaves the
shipped foundation as it was.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import yaml

from .. import foundation
from ..config import load_config
from ..engine.build import build_untrained, load_data, resolve_device
from ..engine.evaluator import evaluate
from ..engine.experiment import CONFIG_DIR, load_experiment_config
from ..engine.foundation import TOKENIZER_DIR, WEIGHTS_FILE
from ..utils import atomic_write_json, atomic_write_text, machine_info, read_jsonl, sha256_file

MAX_FILE_BYTES = 20_000_000  # 20 MB per shipped file
RECORD_FILE = "foundation.json"  # written by export_foundation
COMMANDS_FILE = "commands.jsonl"  # written by `tbps pretrain` into its run folder, one record per invocation
# layout -> (the fine-tuning config whose model measures the file, the pretraining config of that layout)
LAYOUT_CONFIGS = {"openai-clip": ("irra_tiny", "pretrain_tiny_clip"), "blip": ("cada_tiny", "pretrain_tiny_blip")}
PRECISIONS = ("auto", "fp16", "fp32")


def repo_root() -> Path:
    """The checkout holding the package (src/tbps), else the current folder."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def shown_path(path: str | Path | None) -> str | None:
    """A path as the card records it: relative to the repository, or `.../<name>` outside it."""
    if path in (None, ""):
        return None
    p, root = Path(os.path.abspath(Path(path).expanduser())), Path(os.path.abspath(repo_root()))
    if p == root or root in p.parents:
        return p.relative_to(root).as_posix() or "."
    return f".../{p.name}"


def record_command(run_dir: str | Path, argv: Iterable[str]) -> None:
    """Append this invocation of `tbps pretrain` (and the machine) to the run folder's commands.jsonl."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {"time": time.time(), "argv": ["tbps", *argv], "machine": machine_info()}
    with open(run_dir / COMMANDS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")


# ============================================================================ reading the export and the run

def read_export(export_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(foundation.json, the state dict in its foreign layout) of an export; clear errors when incomplete."""
    for need in (RECORD_FILE, WEIGHTS_FILE, TOKENIZER_DIR):
        if not (export_dir / need).exists():
            raise FileNotFoundError(f"{export_dir} is not a foundation export: {need} is missing (write one with "
                                    "`tbps pretrain ... --export DIR`)")
    record = json.loads((export_dir / RECORD_FILE).read_text())
    if record.get("layout") not in LAYOUT_CONFIGS:
        raise ValueError(f"{export_dir / RECORD_FILE}: layout {record.get('layout')!r} is not one of "
                         f"{', '.join(LAYOUT_CONFIGS)}")
    state = torch.load(export_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    if record["layout"] == "blip":
        state = state["model"]  # BLIP's model_base.pth wraps its state dict
    return record, state


def run_history(run_dir: Path) -> dict[str, Any]:
    """Seed, steps, epochs, wall time and zero-shot validation Rank-1 per epoch, from a pretraining run."""
    for need in ("config.yaml", "log.jsonl"):
        if not (run_dir / need).is_file():
            raise FileNotFoundError(f"--run {run_dir}: {need} is missing (the folder of `tbps pretrain --out`)")
    cfg = load_config(run_dir / "config.yaml")
    records = read_jsonl(run_dir / "log.jsonl")
    per_epoch: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("split") == "val":  # a resumed run may log an epoch again: the last one counts
            per_epoch[int(r["epoch"])] = {"epoch": int(r["epoch"]), "step": r["step"],
                                          **{k: r[k] for k in r if k.endswith("/R1")}}
    times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
    summaries = [r["summary"] for r in records if isinstance(r.get("summary"), dict)]
    steps = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=0)
    commands = read_jsonl(run_dir / COMMANDS_FILE) if (run_dir / COMMANDS_FILE).is_file() else []
    return {"config": cfg, "seed": cfg.get("seed"), "steps": steps, "epochs": cfg["train"]["epochs"],
            "epochs_done": max(per_epoch, default=0), "finished": bool(summaries),
            "wall_seconds": round(times[-1] - times[0], 1) if len(times) > 1 else None,
            "train_seconds_last_session": round(summaries[-1]["train_seconds"], 1) if summaries else None,
            "zero_shot_val": [per_epoch[e] for e in sorted(per_epoch)], "commands": commands}


def pretraining_command(history: Mapping[str, Any], layout: str, run_dir: Path, export_dir: Path) -> tuple[list[str], str]:
    """The commands that made the run: recorded by `tbps pretrain`, else rebuilt from its config.yaml
    (the layout's pretraining config plus a --set for every value that differs)."""
    if history["commands"]:
        return [_shown_argv(c["argv"]) for c in history["commands"]], "recorded by tbps pretrain"
    name = LAYOUT_CONFIGS[layout][1]
    default, saved = _leaves(load_experiment_config(name)), _leaves(history["config"])
    sets = []
    for key in sorted(saved.keys() | default.keys()):
        if saved.get(key) != default.get(key):
            value = saved.get(key)
            if isinstance(value, str):  # as typed after --set (a path outside the repository shortened)
                flow = shown_path(value) if os.path.isabs(value) else value
            else:
                flow = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
            sets += ["--set", f"{key}={flow}"]
    argv = ["tbps", "pretrain", "--config", name, "--out", shown_path(run_dir), "--export", shown_path(export_dir),
            *sets]
    return [shlex.join(argv)], f"rebuilt from {shown_path(run_dir / 'config.yaml')} ({name} + the values that differ)"


def _shown_argv(argv: list[str]) -> str:
    shown = []
    for a in argv:
        key, sep, value = a.partition("=")
        if sep and os.path.isabs(value):
            a = f"{key}={shown_path(value)}"
        elif os.path.isabs(a):
            a = shown_path(a)
        shown.append(a)
    return shlex.join(shown)


def _leaves(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping) and v and k != "overrides":
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def corpus_record(root: str | None) -> dict[str, Any]:
    """The corpus the run read: its render's meta.json (preset, seed, counts) and how to render it again."""
    if not root:
        return {}
    out: dict[str, Any] = {"root": shown_path(root)}
    meta_file = Path(root).expanduser() / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        out.update({k: meta.get(k) for k in ("name", "preset", "seed", "height", "width", "num_ids", "num_images",
                                            "num_captions")})
        if meta.get("name") == "tbps-synth":
            where = out["root"] if not out["root"].startswith("...") else f"data/{Path(root).name}"
            out["render"] = f"tbps synth --preset {meta.get('preset')} --seed {meta.get('seed')} --out {where}"
    return out


# ============================================================================ measuring a file

def zero_shot_val(weights: Path, tokenizer_dir: Path, record: Mapping[str, Any], run_cfg: Mapping[str, Any],
                  eval_root: Path, config: str, overrides: Iterable[str] = (), progress: bool = False,
                  ) -> dict[str, dict[str, float]]:
    """Validation metrics of the fine-tuning model (`config`, at the export's widths) built with
    `backbone.pretrained=weights`, before any fine-tuning: the zero-shot result a fine-tuning run starts from."""
    image_size = run_cfg["data"].get("image_size")
    sets = [f"backbone.name={record['backbone']}",
            f"backbone.overrides={json.dumps(record.get('backbone_overrides') or {})}",
            f"data.image_size={json.dumps(image_size)}", f"data.max_text_len={int(record['max_text_len'])}",
            f"data.root={eval_root}", f"data.dataset={run_cfg['data'].get('eval_dataset', 'synth')}",
            "data.eval_root=null", "data.val_from_train=0", "data.cache_images=false",
            f"backbone.pretrained={weights}", f"data.tokenizer={tokenizer_dir}", *overrides]
    cfg = load_experiment_config(config, sets, search_dirs=[CONFIG_DIR])
    dataset = load_data(cfg)
    if dataset.val is None:
        raise ValueError(f"--eval-root {eval_root}: the benchmark has no validation split")
    device = resolve_device(cfg["train"]["device"])
    # the modules the foundation does not fill start alike for every file (the config's seed);
    # building refuses a file that leaves a filled tensor out
    tokenizer, method, test_tf = build_untrained(cfg, dataset, device)
    metrics = evaluate(method, dataset.val, tokenizer, test_tf, int(cfg["data"]["max_text_len"]), device,
                       int(cfg["eval"]["batch_size"]), progress=progress, validation=True)
    metrics.pop("extra", None)
    return {task: {k: round(float(m[k]), 2) for k in ("R1", "R5", "R10", "mAP") if k in m}
            for task, m in metrics.items()}


def _rank1(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {task: m["R1"] for task, m in metrics.items()}


# ============================================================================ the ship

def ship_foundation(export_dir: str | Path, name: str, run_dir: str | Path, eval_root: str | Path | None = None, *,
                    config: str | None = None, overrides: Iterable[str] = (), into: str | Path | None = None,
                    precision: str = "auto", progress: bool = False) -> dict[str, Any]:
    """Write `<into>/<name>/` (default: the package's foundation folder) from an export; returns the card."""
    export_dir, run_dir, overrides = Path(export_dir).expanduser(), Path(run_dir).expanduser(), list(overrides)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if not name or "/" in name or name.startswith(".") or ":" in name:
        raise ValueError(f"--name {name!r}: a foundation name is one folder name (e.g. tiny-clip)")
    record, state = read_export(export_dir)
    history = run_history(run_dir)
    ckpt_meta = Path(str(record.get("checkpoint") or "")) / "meta.json"
    if record.get("checkpoint") and ckpt_meta.is_file():  # the exported checkpoint's own step and epoch
        meta = json.loads(ckpt_meta.read_text())
        history.update(steps=meta.get("global_step", history["steps"]), epochs_done=meta.get("epoch", 0))
    run_cfg = history["config"]
    given = eval_root or run_cfg["data"].get("eval_root")
    if not given or not Path(given).expanduser().is_dir():
        raise FileNotFoundError(f"--eval-root: the benchmark to measure on is not found ({given or 'not given'}; "
                                "the run's data.eval_root is used by default)")
    bench = Path(given).expanduser()
    config = config or LAYOUT_CONFIGS[record["layout"]][0]
    root = Path(into).expanduser() if into else foundation.foundation_root()
    root.mkdir(parents=True, exist_ok=True)
    dest, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shutil.copytree(export_dir / TOKENIZER_DIR, tmp / foundation.TOKENIZER_DIR)
        model_file = tmp / foundation.MODEL_FILE
        _save(state, model_file, torch.float16)
        fp32, fp16 = (zero_shot_val(w, export_dir / TOKENIZER_DIR, record, run_cfg, bench, config, overrides, progress)
                      for w in (export_dir / WEIGHTS_FILE, model_file))
        same = _rank1(fp32) == _rank1(fp16)
        dtype = "float16" if precision == "fp16" or (precision == "auto" and same) else "float32"
        if dtype == "float32":
            _save(state, model_file, torch.float32)
        files = {p.relative_to(tmp).as_posix(): p for p in sorted(tmp.rglob("*")) if p.is_file()}
        too_big = {k: p.stat().st_size for k, p in files.items() if p.stat().st_size > MAX_FILE_BYTES}
        if too_big:
            shown = ", ".join(f"{k} ({b / 1e6:.1f} MB)" for k, b in too_big.items())
            raise ValueError(f"refusing to ship {name}: {shown} over the {MAX_FILE_BYTES / 1e6:.0f} MB limit per file"
                             + ("" if dtype == "float16" else " (in float32, because float16 changed the measured "
                                "zero-shot Rank-1)"))
        card = _card(name, record, state, history, run_dir, export_dir, bench, config, overrides, fp32, fp16,
                     same, dtype, precision, {k: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                                             for k, p in files.items()})
        atomic_write_json(tmp / foundation.CARD_JSON, card)
        atomic_write_text(tmp / foundation.CARD_README, render_card(card))
        old = root / f".{name}.old-{os.getpid()}"
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def _save(state: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    # clone: safetensors refuses tensors that share storage (tied weights are stored once per key)
    save_file({k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()},
              str(path), metadata={"format": "pt"})
    path.chmod(0o644)  # a package file: readable by every user that imports tbps


def _card(name: str, record: Mapping[str, Any], state: Mapping[str, torch.Tensor], history: Mapping[str, Any],
          run_dir: Path, export_dir: Path, bench: Path, config: str, overrides: list[str],
          fp32: dict, fp16: dict, same: bool, dtype: str, precision: str, files: dict) -> dict[str, Any]:
    run_cfg = history["config"]
    commands, command_source = pretraining_command(history, record["layout"], run_dir, export_dir)
    recorded = [c.get("machine") for c in history["commands"] if c.get("machine")]
    machine = dict(recorded[0]) if recorded else machine_info()
    machine_source = "recorded by tbps pretrain" if recorded else "shipping machine: the run records none"
    return {
        "name": name,
        "reference": f"{foundation.PREFIX}{name}",
        "layout": record["layout"],
        "backbone": record["backbone"],
        "backbone_overrides": record.get("backbone_overrides"),
        "image_size": run_cfg["data"].get("image_size"),
        "max_text_len": record["max_text_len"],
        "parameters": int(sum(v.numel() for v in state.values() if v.is_floating_point())),
        "tensors": len(state),
        "dtype": dtype,
        "precision_rule": precision,
        "corpus": corpus_record(run_cfg["data"].get("root")),
        "pretraining": {
            "commands": commands, "command_source": command_source,
            "seed": history["seed"], "steps": history["steps"],
            "epochs": history["epochs"], "epochs_done": history["epochs_done"], "finished": history["finished"],
            "batch_size": run_cfg["train"]["batch_size"], "lr": run_cfg["train"]["lr"],
            "wall_seconds": history["wall_seconds"], "wall_seconds_source": "first to last record of log.jsonl",
            "train_seconds_last_session": history["train_seconds_last_session"],
            "zero_shot_val": history["zero_shot_val"], "run": shown_path(run_dir), "export": shown_path(export_dir),
            "checkpoint": shown_path(record.get("checkpoint")),
        },
        "machine": {**machine, "source": machine_source},
        "ship_check": {
            "what": "zero-shot validation metrics of the fine-tuning model built from each file (before training)",
            "config": config, "overrides": [shown_path(o) if os.path.isabs(o) else o for o in overrides],
            "benchmark": shown_path(bench), "split": "val",
            "float32_export": fp32, "float16": fp16, "float16_changes_rank1": not same,
            "torch": torch.__version__,
        },
        "files": files,
        "shipped_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render_card(card: Mapping[str, Any]) -> str:
    """The model card's README.md, from card.json's values."""
    pt, ship, m = card["pretraining"], card["ship_check"], card["machine"]
    corpus = card["corpus"]
    lines = [f"# Foundation `{card['name']}`", "",
             f"Tiny {card['layout']}-layout foundation of tbps, pretrained from random weights on the embedded "
             f"pretraining corpus. Configs use it as `backbone.pretrained: {card['reference']}` and "
             f"`data.tokenizer: {card['reference']}`.", "",
             "| | |", "|---|---|",
             f"| layout | {card['layout']} (the key names `backbone.pretrained` reads) |",
             f"| backbone | {card['backbone']} {json.dumps(card['backbone_overrides'])}, "
             f"image size {card['image_size'] or 'backbone default'}, {card['max_text_len']} tokens |",
             f"| parameters | {card['parameters']:,} in {card['tensors']} tensors, stored as {card['dtype']} |",
             f"| corpus | {corpus.get('root')}: {corpus.get('num_images')} images, {corpus.get('num_captions')} "
             f"captions (preset {corpus.get('preset')}, seed {corpus.get('seed')}) |",
             f"| seed | {pt['seed']} |",
             f"| steps | {pt['steps']} (the checkpoint after epoch {pt['epochs_done']} of {pt['epochs']}, chosen on "
             f"validation Rank-1; batch {pt['batch_size']}{'' if pt['finished'] else ', run not finished'}) |",
             f"| wall time | {_hours(pt['wall_seconds'])} ({pt['wall_seconds_source']}) |",
             f"| machine | {m.get('cpu')}, {m.get('cpu_usable') or m.get('cpu_count')} cores, torch {m.get('torch')}"
             f"{', ' + str(m.get('gpu')) if m.get('gpu') else ''} ({m['source']}) |", "",
             "## How it was made", "",
             *(["Corpus:", "", "```", corpus["render"], "```", ""] if corpus.get("render") else []),
             f"Pretraining ({pt['command_source']}):", "", "```", *pt["commands"], "```", "",
             "## Zero-shot validation Rank-1 during pretraining", "",
             "Text-to-image Rank-1 (%) on the benchmark's validation split after each epoch (run log).", ""]
    tasks = sorted({k for r in pt["zero_shot_val"] for k in r if k.endswith("/R1")})
    if tasks:
        lines += ["| epoch | step | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        lines += [f"| {r['epoch']} | {r['step']} | " + " | ".join(f"{r[t]:.2f}" if t in r else "" for t in tasks)
                  + " |" for r in pt["zero_shot_val"]]
    else:
        lines.append("(the run logged no validation)")
    lines += ["", "## Precision", "",
              f"Zero-shot validation metrics of `{ship['config']}` built from each file through "
              f"`backbone.pretrained` (on {ship['benchmark']}, measured when shipped):", "",
              "| file | task | R1 | R5 | R10 | mAP |", "|---|---|---|---|---|---|"]
    for label, key in (("float32 export", "float32_export"), ("float16", "float16")):
        for task, mm in ship[key].items():
            lines.append(f"| {label} | {task} | " + " | ".join(f"{mm.get(k, float('nan')):.2f}"
                                                            for k in ("R1", "R5", "R10", "mAP")) + " |")
    verdict = ("float16 changes no Rank-1: shipped in float16" if not ship["float16_changes_rank1"] else
               "float16 changes the Rank-1: shipped in " + card["dtype"])
    lines += ["", verdict + (f" (precision forced to {card['precision_rule']})" if card["precision_rule"] != "auto"
                             else "") + ".", "", "## Files", "", "| file | bytes | SHA-256 |", "|---|---|---|"]
    lines += [f"| {k} | {v['bytes']:,} | `{v['sha256']}` |" for k, v in card["files"].items()]
    lines += ["", f"Shipped {card['shipped_at']} with `tbps foundation ship`; `make foundation` makes it again "
              "from scratch. Paths are relative to the repository (`.../name`: a folder outside it).", ""]
    return "\n".join(lines)


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds / 3600:.2f} h ({seconds:,.0f} s)"
