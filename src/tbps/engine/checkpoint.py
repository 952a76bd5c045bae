"""Checkpoints as folders swapped in atomically: a kill at any moment leaves a loadable one.

A checkpoint folder holds `model.safetensors` (weights), `trainer_state.pt` (optimizer,
scheduler, counters, RNG states) and `meta.json`. It is written to `NAME.tmp`, then swapped in
place of `NAME`; a kill between the two renames leaves `NAME.old`, which `resolve` picks up.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of the tensors, a tensor tied under two names (e.g. a tied LM head) stored once per
    name: safetensors refuses tensors that share memory. Loading fills the tied tensor twice, alike."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous().cpu()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def save_checkpoint(folder: str | Path, model: torch.nn.Module, trainer_state: dict[str, Any] | None,
                    meta: dict[str, Any]) -> Path:
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = _unshared(model.state_dict())
    save_file(state, str(tmp / "model.safetensors"))
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def resolve_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint at `folder`, or its previous version if a swap was interrupted."""
    folder = Path(folder)
    for cand in (folder, folder.with_name(folder.name + ".old")):
        if (cand / "model.safetensors").is_file() and (cand / "meta.json").is_file():
            return cand
    return None


def load_model_weights(folder: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing keys {missing[:10]}"
                           f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                           f"{' ...' if len(unexpected) > 10 else ''}")
    return json.loads((folder / "meta.json").read_text())


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    return torch.load(Path(folder) / "trainer_state.pt", map_location="cpu", weights_only=False)
