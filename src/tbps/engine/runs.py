"""Load a trained run (config, tokenizer, weights) for evaluation, search or export."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..methods import Method
from .build import build_model, build_tokenizer, build_transforms, image_size_of, load_data, resolve_device
from .checkpoint import load_model_weights, resolve_checkpoint
from .evaluator import evaluate
from .experiment import load_experiment_config


@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: Path
    cfg: dict[str, Any]
    tokenizer: Any
    method: Method
    meta: dict[str, Any]
    device: torch.device

    @property
    def max_len(self) -> int:
        return int(self.cfg["data"]["max_text_len"])

    def test_transform(self):
        return build_transforms(self.cfg, image_size_of(self.method))[1]


def find_checkpoint(path: str | Path, which: str | None = None) -> tuple[Path, Path]:
    """-> (run folder, checkpoint folder) for a run folder or a checkpoint folder inside one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run or checkpoint at {path}")
    if (path / "config.yaml").is_file():
        order = [which] if which else ["best", "last"]
        for name in order:
            ckpt = resolve_checkpoint(path / "checkpoints" / name)
            if ckpt is not None:
                return path, ckpt
        raise FileNotFoundError(f"{path} has no complete checkpoint ({', '.join(order)}) under {path / 'checkpoints'}")
    ckpt = resolve_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path} is neither a run folder (config.yaml) nor a checkpoint (model.safetensors)")
    run_dir = ckpt.parent.parent
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} is not inside a run folder: {run_dir / 'config.yaml'} is missing")
    return run_dir, ckpt


def load_run(path: str | Path, which: str | None = None, device: str | None = None) -> LoadedRun:
    run_dir, ckpt = find_checkpoint(path, which)
    cfg = load_experiment_config(run_dir / "config.yaml")  # strict: a stale or edited key is refused
    tokenizer = build_tokenizer(cfg, None, run_dir)
    import json

    meta = json.loads((ckpt / "meta.json").read_text())
    method = build_model(cfg, tokenizer, int(meta["num_classes"]), load_pretrained=False)  # trained weights follow
    load_model_weights(ckpt, method)
    dev = resolve_device(device or cfg["train"]["device"])
    method.to(dev).eval()
    return LoadedRun(run_dir, ckpt, cfg, tokenizer, method, meta, dev)


def evaluate_run(path: str | Path, split: str = "test", checkpoint: str | None = None, progress: bool = True,
                 data_root: str | None = None, report_dir: str | Path | None = None,
                 score_kwargs: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    run = load_run(path, checkpoint)
    if data_root:
        run.cfg["data"]["root"] = data_root
    dataset = load_data(run.cfg)
    eval_split = dataset.val if split == "val" else dataset.test
    if eval_split is None:
        raise ValueError(f"dataset {run.cfg['data']['dataset']} has no {split} split")
    metrics = evaluate(run.method, eval_split, run.tokenizer, run.test_transform(), run.max_len, run.device,
                       int(run.cfg["eval"]["batch_size"]), progress=progress,
                       score_kwargs=score_kwargs, report_dir=report_dir)
    info = {"method": run.method.name, "checkpoint": str(run.checkpoint), "run_dir": str(run.run_dir),
            "num_queries": eval_split.num_queries, "num_images": eval_split.num_images,
            "epoch": run.meta.get("epoch")}
    return metrics, info
