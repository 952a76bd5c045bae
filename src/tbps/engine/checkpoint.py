"""Checkpoints as folders swapped in atomically: a kill at any moment leaves a loadable one.

A checkpoint folder holds `model.safetensors` (weights), `trainer_state.pt` (optimizer,
scheduler, counters, RNG states) and `meta.json`. It is written to `NAME.tmp`, then swapped in
place of `NAME`; a kill between the two renames leaves `NAME.old`, which `resolve` picks up.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not what it claims, or for another model."""


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's meta.json as a mapping, or CheckpointError naming the file."""
    path = Path(folder) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint metadata {path} is unreadable ({err}); the checkpoint is damaged: "
                              "use the run's other checkpoint (--checkpoint last/best) or train again") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {path} must be a JSON object, got {type(meta).__name__}")
    return meta


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint weights {path} are empty (0 bytes): the file was not written out; "
                              "use the run's other checkpoint or train again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint weights {path} are not a readable safetensors file ({err}): "
                              "truncated or not a tbps checkpoint") from err


def _shape_mismatches(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    own = model.state_dict()
    return [f"{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)} in the model"
            for k, v in state.items() if k in own and own[k].shape != v.shape]


def load_model_weights(folder: str | Path, model: torch.nn.Module, expect_method: str | None = None) -> dict[str, Any]:
    """Load `folder`'s weights into `model`; CheckpointError names the file and what does not match
    (method, tensor shapes, missing or unexpected tensors) before any weight is changed."""
    folder = Path(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model weights at {path}")
    meta = read_meta(folder)
    if expect_method is not None and meta.get("method") not in (None, expect_method):
        raise CheckpointError(f"checkpoint {folder} holds a {meta['method']} model, the config builds a "
                              f"{expect_method} model (method.name={expect_method})")
    state = _read_weights(path)
    mismatched = _shape_mismatches(model, state)
    if mismatched:
        raise CheckpointError(f"checkpoint {path} does not fit the model built from the config: "
                              f"{len(mismatched)} tensor(s) differ in shape, e.g. {'; '.join(mismatched[:3])} "
                              "(was it trained with other backbone, method or data settings?)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the model: missing keys {missing[:10]}"
                              f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
                              f"{' ...' if len(unexpected) > 10 else ''}")
    return meta


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "trainer_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no trainer state at {path}: this checkpoint cannot resume training") from None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"trainer state {path} is unreadable ({type(err).__name__}: {err}): "
                              "truncated or not written by tbps") from err
    expected = ("optimizer", "scheduler", "scaler", "counters", "torch_rng")
    if not isinstance(state, dict) or any(k not in state for k in expected):
        raise CheckpointError(f"trainer state {path} lacks {', '.join(expected)}: not written by tbps train")
    return state
