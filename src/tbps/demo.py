"""`make demo`: render the small benchmark, fine-tune IRRA from the shipped tiny CLIP foundation,
evaluate on test beside the zero-shot foundation and the from-scratch route, write a page.

The from-scratch row is not re-run (it costs a 12-minute training): it is read from
benchmarks/results/demo_scratch.json (`read_scratch_result`), whose format is

    {"config": "irra_tiny_scratch", "preset": "small", "seed": 0, "split": "test",
     "metrics": {"t2i": {"R1": ..., "mAP": ...}}, "command": "...", "source": "README, ..."}
"""
from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .data.datasets import DatasetWarning
from .engine.build import build_untrained, load_data
from .engine.evaluator import encode_split
from .engine.experiment import load_experiment_config
from .engine.runs import evaluate_run, load_run
from .engine.trainer import train
from .evaluation import format_metrics_table, rank_metrics
from .report import RankedQuery, write_results_page
from .utils import atomic_write_json

CONFIG = Path(__file__).parent / "configs" / "irra_tiny.yaml"
# The stored from-scratch result (a source checkout's benchmarks/results; absent in an installed wheel).
SCRATCH_RESULT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "demo_scratch.json"
SCRATCH_LABEL = "from README, not re-run"


def read_scratch_result(path: Path, preset: str, seed: int) -> dict[str, Any] | None:
    """The stored from-scratch demo result for this preset and seed, None when none is recorded.
    A file that is there but malformed is a clear error naming the file and the field."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(stored).__name__}")
    for key in ("preset", "seed", "metrics"):
        if key not in stored:
            raise ValueError(f"{path}: missing field {key!r}")
    if stored["preset"] != preset or stored["seed"] != seed:
        return None  # recorded for another benchmark: not comparable
    t2i = stored["metrics"].get("t2i") if isinstance(stored["metrics"], dict) else None
    if not isinstance(t2i, dict) or not all(isinstance(t2i.get(k), (int, float)) for k in ("R1", "mAP")):
        raise ValueError(f"{path}: field metrics.t2i must hold numbers R1 and mAP")
    return stored


def _rank_metrics_on(method: Any, tokenizer: Any, transform: Any, max_len: int, device: torch.device,
                     split: Any, progress: bool) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Text-to-image metrics of `method` on `split`, and the similarity matrix they come from."""
    text_feats, image_feats = encode_split(method, split, tokenizer, transform, max_len, device, progress=progress)
    sim = method.score(text_feats, image_feats, split=split)["t2i"]
    return {"t2i": rank_metrics(sim, split.caption_pids, split.image_pids)}, sim


def zero_shot_metrics(cfg: dict[str, Any], progress: bool = False) -> dict[str, dict[str, float]]:
    """The foundation before any fine-tuning (`backbone.pretrained` loaded, nothing trained) on the
    test split: the method's global similarity only reads the pretrained towers."""
    data = load_data(cfg)
    tokenizer, method, transform = build_untrained(cfg, data)
    with torch.no_grad():
        metrics, _ = _rank_metrics_on(method, tokenizer, transform, int(cfg["data"]["max_text_len"]),
                                      torch.device("cpu"), data.test, progress)
    return metrics


def _row(name: str, r1: float | None, m_ap: float | None, note: str = "") -> str:
    num = (lambda x: f"{x:6.2f}" if x is not None else "     -")
    return f"{name:<44} | {num(r1)} | {num(m_ap)} | {note}"


def run_demo(out: Path, preset: str = "small", seed: int = 0, epochs: int | None = None,
             progress: bool = True, num_page_queries: int = 8, overrides: list[str] | tuple[str, ...] = (),
             scratch_result: Path = SCRATCH_RESULT) -> dict:
    """`overrides` (KEY=VALUE, after the demo's own) change the fine-tuning config, e.g. another foundation."""
    from .synth import attribute_oracle, generate, is_current
    from .synth.generator import STYLE_SHIFT_DIR

    out.mkdir(parents=True, exist_ok=True)
    data_dir, run_dir = out / "data", out / "run"
    t0 = time.time()
    if is_current(data_dir, preset=preset, seed=seed):
        print(f"[1/5] benchmark already at {data_dir}")
    else:
        if data_dir.exists() or run_dir.exists():  # rendered by another preset or version: start over
            print(f"[1/5] {data_dir} holds another render of the benchmark; removing it and its run")
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"[1/5] rendering the '{preset}' benchmark into {data_dir}")
        generate(data_dir, preset=preset, seed=seed, progress=progress)
    t_synth = time.time() - t0

    cfg_overrides = [f"data.root={data_dir}", f"seed={seed}", *([f"train.epochs={epochs}"] if epochs else []),
                     *overrides]
    cfg = load_experiment_config(CONFIG, cfg_overrides)
    foundation = cfg["backbone"].get("pretrained")
    print(f"[2/5] zero-shot: the foundation ({foundation}) on the test split, before any fine-tuning")
    t1 = time.time()
    zero_shot = zero_shot_metrics(cfg, progress=progress)
    t_zero_shot = time.time() - t1

    resume = (run_dir / "checkpoints" / "last").exists()
    print(f"[3/5] fine-tuning irra (tiny CLIP layout) from the foundation into {run_dir}"
          + (" (resuming)" if resume else ""))
    t1 = time.time()
    summary = train(cfg, run_dir, resume=resume, progress=progress)
    t_train = time.time() - t1

    print("[4/5] evaluating the best-on-validation checkpoint on the test split")
    run = load_run(run_dir)
    test = load_data(run.cfg).test
    metrics, sim = _rank_metrics_on(run.method, run.tokenizer, run.test_transform(), run.max_len, run.device, test,
                                    progress)
    with warnings.catch_warnings():  # the style-shift folder is test-only by design
        warnings.filterwarnings("ignore", message=".*no usable (train|val) entries", category=DatasetWarning)
        style_shift, _ = evaluate_run(run_dir, split="test", progress=progress,
                                      data_root=str(data_dir / STYLE_SHIFT_DIR))
    oracle = attribute_oracle(data_dir, "test")
    scratch = read_scratch_result(scratch_result, preset, seed)
    chance_r1 = 100.0 * sum(test.image_pids.count(p) for p in test.caption_pids) / (test.num_queries * test.num_images)
    print(format_metrics_table(metrics))
    z, f = zero_shot["t2i"], metrics["t2i"]
    rows = [f"{'test split, text-to-image':<44} | Rank-1 |    mAP |",
            _row(f"zero-shot foundation ({Path(str(foundation)).name})", z["R1"], z["mAP"], "computed now"),
            _row("fine-tuned (irra_tiny)", f["R1"], f["mAP"], "computed now")]
    if scratch is None:
        rows.append(_row("from scratch (irra_tiny_scratch)", None, None,
                         f"not recorded ({scratch_result.name} has no {preset} seed {seed} result)"))
    else:
        s = scratch["metrics"]["t2i"]
        rows.append(_row(f"from scratch ({scratch.get('config', 'irra_tiny_scratch')})", s["R1"], s["mAP"],
                         SCRATCH_LABEL))
    ss = style_shift["t2i"]
    rows += [_row("fine-tuned, style-shift captions", ss["R1"], ss["mAP"], f"{STYLE_SHIFT_DIR}/, unseen caption style"),
             _row("attribute oracle (perfect attribute reader)", 100.0 * oracle["rank1"], None,
                  f"{100.0 * oracle['rank1'] - f['R1']:.1f} Rank-1 points above fine-tuned")]
    print("\n".join(rows))
    print(f"chance Rank-1: {chance_r1:.2f}%  ({test.num_queries} queries, {test.num_images} gallery images, "
          f"{test.num_ids} identities)")

    print("[5/5] writing the results page")
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(test.num_queries, generator=g)[:num_page_queries].tolist()
    queries = []
    for q in picks:
        top = sim[q].topk(10)
        queries.append(RankedQuery(test.captions[q], test.caption_pids[q],
                                   [(test.image_paths[i], test.image_pids[i], float(s))
                                    for s, i in zip(top.values.tolist(), top.indices.tolist())]))
    m = metrics["t2i"]
    page = write_results_page(out / "page", queries, title="tbps demo: IRRA fine-tuned from the tiny CLIP foundation",
                              subtitle=f"test Rank-1 {m['R1']:.2f}%, mAP {m['mAP']:.2f}% (zero-shot foundation "
                                       f"{z['R1']:.2f}%, chance {chance_r1:.2f}%)")
    result = {"metrics": metrics, "foundation": str(foundation),
              "rows": {"zero_shot": zero_shot, "fine_tuned": metrics,
                       "scratch": None if scratch is None else {**scratch["metrics"], "label": SCRATCH_LABEL,
                                                                "config": scratch.get("config")}},
              "style_shift": {k: v for k, v in style_shift.items() if k == "t2i"},
              "attribute_oracle_R1": 100.0 * oracle["rank1"], "chance_R1": chance_r1,
              "synth_seconds": t_synth, "zero_shot_seconds": t_zero_shot, "train_seconds": t_train,
              "train_pairs_per_s": summary.get("pairs_per_s"), "best_val_r1": run.meta.get("best_r1"),
              "page": str(page), "total_seconds": time.time() - t0}
    atomic_write_json(out / "demo_result.json", result)
    print(f"results page: {page}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("metrics", "rows", "style_shift")}, indent=2,
                     default=str))
    return result
