"""Effective rank of a model's retrieval embeddings: the measure that shows a collapsed foundation.

A contrastive model that spreads its embeddings over many directions has a high effective rank;
one that collapsed onto a few (README, "Why the first foundations collapsed") has a low one. Each
model is measured on the benchmark's validation split: the L2-normalised global image and text
embeddings, centred, their singular values s, p = s^2 / sum(s^2), effective rank = exp(-sum p log p)
(Roy & Vetterli, 2007), plus the mean cosine between different images.

    python benchmarks/embedding_rank.py --data-root data/synth-small \\
        --config irra_tiny --config irra_tiny_scratch --run runs/demo/run

`--config NAME` measures the config's model as built (a foundation config: the foundation before
fine-tuning; a scratch config: random weights, seed 0); `--run DIR` a trained run's best checkpoint.
Writes benchmarks/results/embedding_rank.{json,md}.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _ablation import REPO, repo_relative
from tbps.engine.build import build_untrained, load_data
from tbps.engine.evaluator import encode_split
from tbps.engine.experiment import load_experiment_config
from tbps.engine.runs import load_run
from tbps.evaluation import effective_rank
from tbps.utils import atomic_write_json, atomic_write_text, machine_info

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "tbps" / "configs"


def mean_off_diagonal_cosine(emb: torch.Tensor) -> float:
    e = F.normalize(emb.float(), dim=-1)
    c = e @ e.t()
    n = len(e)
    return float((c.sum() - c.diagonal().sum()) / max(n * (n - 1), 1))


def measure(method: Any, tokenizer: Any, transform: Any, max_len: int, split: Any) -> dict[str, float]:
    with torch.no_grad():
        text, image = encode_split(method, split, tokenizer, transform, max_len, torch.device("cpu"), progress=False)
    img, txt = image["emb"], text["emb"]  # every method's global embedding, as the evaluator reads it
    return {"image_effective_rank": effective_rank(img), "text_effective_rank": effective_rank(txt),
            "image_mean_cosine": mean_off_diagonal_cosine(img), "dim": int(img.shape[1]),
            "num_images": int(img.shape[0]), "num_captions": int(txt.shape[0])}


def from_config(name: str, data_root: str, seed: int) -> dict[str, float]:
    cfg = load_experiment_config(CONFIGS / f"{name}.yaml", [f"data.root={data_root}", f"seed={seed}"])
    data = load_data(cfg)
    tokenizer, method, transform = build_untrained(cfg, data)
    return measure(method, tokenizer, transform, int(cfg["data"]["max_text_len"]), data.val)


def from_run(path: str, data_root: str) -> dict[str, float]:
    run = load_run(path)
    run.cfg["data"]["root"] = data_root
    run.cfg["data"]["eval_root"] = None
    split = load_data(run.cfg).val
    return measure(run.method, run.tokenizer, run.test_transform(), run.max_len, split)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="effective rank of retrieval embeddings on the validation split")
    p.add_argument("--data-root", default=str(REPO / "data" / "synth-small"))
    p.add_argument("--config", action="append", default=[], help="a config name, measured as built")
    p.add_argument("--run", action="append", default=[], help="a run folder, measured at its best checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "embedding_rank"))
    args = p.parse_args(argv)
    if not args.config and not args.run:
        p.error("give at least one --config or --run")
    rows = [{"kind": "config", "model": c, **from_config(c, args.data_root, args.seed)} for c in args.config]
    rows += [{"kind": "run", "model": os.path.abspath(r), **from_run(r, args.data_root)} for r in args.run]
    payload = repo_relative({"split": "val", "data_root": args.data_root, "seed": args.seed,
                             "machine": machine_info(), "rows": rows})
    lines = ["# Effective rank of the retrieval embeddings (validation split)", "",
             "| model | image rank | text rank | mean image-image cosine | dim |", "|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['kind']} {r['model']} | {r['image_effective_rank']:.1f} | {r['text_effective_rank']:.1f} | "
                     f"{r['image_mean_cosine']:.2f} | {r['dim']} |")
    atomic_write_json(Path(args.out + ".json"), payload)
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
