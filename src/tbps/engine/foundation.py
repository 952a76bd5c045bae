"""Export a pretraining run as a foundation: weights in a layout `backbone.pretrained` reads, tokenizer beside.

The clip layout is written as an OpenAI-CLIP state dict (`foundation.pt`: `visual.*`, `transformer.*`,
`visual.proj` and `text_projection` as matrices applied on the right), the same keys
as OpenAI's ViT-B-16 file, so fine-tuning reads it through the loader that reads the real one
(models/pretrained.py). The export is checked before it is written: converting it back with the
loader's own key map must give every backbone tensor of the run, unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..models.pretrained_keys import convert_state_dict
from .runs import load_run

WEIGHTS_FILE = "foundation.pt"
TOKENIZER_DIR = "tokenizer"


def openai_clip_state(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone of a clip-layout method under OpenAI CLIP's key names (the inverse of the loader's map)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in method.state_dict().items():
        if not k.startswith("backbone."):
            continue
        v = v.detach().cpu().float().contiguous()
        if k == "backbone.image_proj.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k == "backbone.text_proj.weight":
            out["text_projection"] = v.t().contiguous()
        elif k.startswith("backbone.visual."):
            out[k[len("backbone."):]] = v
        elif k.startswith("backbone.text."):
            out[k[len("backbone.text."):]] = v
        else:
            raise ValueError(f"export: {k} has no place in an OpenAI-CLIP state dict")
    return out  # (no logit_scale: the loader skips it, and fine-tuning methods set their own)


def _check_round_trip(method: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    converted, _, left = convert_state_dict(state)
    ours = {k: v for k, v in method.state_dict().items() if k.startswith("backbone.")}
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
    method = loaded.method
    family = method.backbone.cfg.family
    if family != "clip":
        raise ValueError(f"export: the {family} layout has no foundation export yet; only the clip layout "
                         "(OpenAI-CLIP state dict) is written")
    state = openai_clip_state(method)
    _check_round_trip(method, state)
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / WEIGHTS_FILE)
    loaded.tokenizer.save(tmp / TOKENIZER_DIR)
    record = {"layout": "openai-clip", "weights": WEIGHTS_FILE, "tokenizer": TOKENIZER_DIR,
              "backbone": loaded.cfg["backbone"]["name"], "backbone_overrides": loaded.cfg["backbone"]["overrides"],
              "max_text_len": int(loaded.cfg["data"]["max_text_len"]), "checkpoint": str(loaded.checkpoint),
              "tensors": len(state)}
    (tmp / "foundation.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return record
