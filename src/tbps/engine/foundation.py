"""Export a pretraining run as a foundation: weights in a layout `backbone.pretrained` reads, tokenizer beside.

The clip layout is written as an OpenAI-CLIP state dict (`foundation.pt`, the keys of OpenAI's
ViT-B-16 file), the blip layout as BLIP's `model_base.pth` (`{"model": {...}}`); which modules each
layout carries and their names are the loader's (`models/pretrained_keys.py`). So fine-tuning reads a
foundation through the loader that reads the real files. The export is checked before it is written:
converting it back with the loader's own key map must give every exported tensor of the run, unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..models.pretrained_keys import EXPORTED_MODULES, convert_state_dict, export_state_dict
from .runs import load_run

WEIGHTS_FILE = "foundation.pt"
TOKENIZER_DIR = "tokenizer"


def foundation_state(method: torch.nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, state dict in that layout) of a pretrained method, checked to load back unchanged."""
    family = method.backbone.cfg.family
    modules = tuple(m + "." for m in EXPORTED_MODULES[family])
    ours = {k: v for k, v in method.state_dict().items() if k.startswith(modules)}
    state = export_state_dict(ours, family)
    _check_round_trip(ours, state)
    return ("openai-clip" if family == "clip" else "blip"), state


def _check_round_trip(ours: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    converted, _, left = convert_state_dict(state)
    if left or set(converted) != set(ours):
        raise ValueError(f"export: the loader would not read this export back: unmapped {left[:5]}, missing "
                         f"{sorted(set(ours) - set(converted))[:5]}, extra {sorted(set(converted) - set(ours))[:5]}")
    for k, v in ours.items():
        if not torch.equal(converted[k], v.float().cpu()):
            raise ValueError(f"export: {k} changes on the way back through the loader")


def export_foundation(run: str | Path, out_dir: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
    """Write `out_dir/foundation.pt` (+ `tokenizer/`, `foundation.json`) from a pretraining run (or checkpoint
    folder); returns the record also written to foundation.json. Atomic: a temporary folder is renamed."""
    loaded = load_run(run, checkpoint, device="cpu")
    layout, state = foundation_state(loaded.method)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state if layout == "openai-clip" else {"model": state}, tmp / WEIGHTS_FILE)  # BLIP: model_base.pth
    loaded.tokenizer.save(tmp / TOKENIZER_DIR)
    record = {"layout": layout, "weights": WEIGHTS_FILE, "tokenizer": TOKENIZER_DIR,
              "backbone": loaded.cfg["backbone"]["name"], "backbone_overrides": loaded.cfg["backbone"]["overrides"],
              "max_text_len": int(loaded.cfg["data"]["max_text_len"]), "checkpoint": str(loaded.checkpoint),
              "tensors": len(state)}
    (tmp / "foundation.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return record
