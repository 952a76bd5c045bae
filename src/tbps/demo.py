"""`make demo`: render the small benchmark, train IRRA from scratch, evaluate on test, write a page."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from .engine.build import load_data
from .engine.evaluator import encode_split
from .engine.experiment import load_experiment_config
from .engine.runs import load_run
from .engine.trainer import train
from .evaluation import format_metrics_table, rank_metrics
from .report import RankedQuery, write_results_page
from .utils import atomic_write_json

CONFIG = Path(__file__).parent / "configs" / "irra_tiny.yaml"


def run_demo(out: Path, preset: str = "small", seed: int = 0, epochs: int | None = None,
             progress: bool = True, num_page_queries: int = 8) -> dict:
    from .synth import generate, is_current

    out.mkdir(parents=True, exist_ok=True)
    data_dir, run_dir = out / "data", out / "run"
    t0 = time.time()
    if is_current(data_dir, preset=preset, seed=seed):
        print(f"[1/4] benchmark already at {data_dir}")
    else:
        if data_dir.exists() or run_dir.exists():  # rendered by another preset or version: start over
            print(f"[1/4] {data_dir} holds another render of the benchmark; removing it and its run")
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"[1/4] rendering the '{preset}' benchmark into {data_dir}")
        generate(data_dir, preset=preset, seed=seed, progress=progress)
    t_synth = time.time() - t0

    overrides = [f"data.root={data_dir}", f"seed={seed}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    cfg = load_experiment_config(CONFIG, overrides)
    resume = (run_dir / "checkpoints" / "last").exists()
    print(f"[2/4] training irra (tiny CLIP layout, from scratch) into {run_dir}" + (" (resuming)" if resume else ""))
    t1 = time.time()
    summary = train(cfg, run_dir, resume=resume, progress=progress)
    t_train = time.time() - t1

    print("[3/4] evaluating the best-on-validation checkpoint on the test split")
    run = load_run(run_dir)
    test = load_data(run.cfg).test
    text_feats, image_feats = encode_split(run.method, test, run.tokenizer, run.test_transform(), run.max_len,
                                           run.device, progress=progress)
    sim = run.method.score(text_feats, image_feats, split=test)["t2i"]
    metrics = {"t2i": rank_metrics(sim, test.caption_pids, test.image_pids)}
    chance_r1 = 100.0 * sum(test.image_pids.count(p) for p in test.caption_pids) / (test.num_queries * test.num_images)
    print(format_metrics_table(metrics))
    print(f"chance Rank-1: {chance_r1:.2f}%  ({test.num_queries} queries, {test.num_images} gallery images, "
          f"{test.num_ids} identities)")

    print("[4/4] writing the results page")
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(test.num_queries, generator=g)[:num_page_queries].tolist()
    queries = []
    for q in picks:
        top = sim[q].topk(10)
        queries.append(RankedQuery(test.captions[q], test.caption_pids[q],
                                   [(test.image_paths[i], test.image_pids[i], float(s))
                                    for s, i in zip(top.values.tolist(), top.indices.tolist())]))
    m = metrics["t2i"]
    page = write_results_page(out / "page", queries, title="tbps demo: IRRA on the embedded benchmark",
                              subtitle=f"test Rank-1 {m['R1']:.2f}%, mAP {m['mAP']:.2f}% (chance {chance_r1:.2f}%)")
    result = {"metrics": metrics, "chance_R1": chance_r1, "synth_seconds": t_synth, "train_seconds": t_train,
              "train_pairs_per_s": summary.get("pairs_per_s"), "best_val_r1": run.meta.get("best_r1"),
              "page": str(page), "total_seconds": time.time() - t0}
    atomic_write_json(out / "demo_result.json", result)
    print(f"results page: {page}")
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2, default=str))
    return result
