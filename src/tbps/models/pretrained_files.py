"""Reading pretrained weights from local files into CPU tensors (tbps.models.pretrained loads them).

TorchScript archives (OpenAI's ViT-B-16.pt), state dicts saved by `torch.save` (read with
`weights_only=True` unless the caller trusts the file's pickles), `.safetensors` files and
Hugging Face model folders (single or sharded weights). Nothing is ever downloaded.
"""
from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["PretrainedLoadError", "RawCheckpoint", "read_checkpoint", "checkpoint_folder", "HF_WEIGHT_FILES"]

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


class PretrainedLoadError(ValueError):
    """The checkpoint cannot fill the model: unknown layout, wrong family, missing/unexpected keys, shapes."""


# ============================================================================ reading files

@dataclass
class RawCheckpoint:
    path: Path
    source: str                      # e.g. "TorchScript archive", "Hugging Face folder (model.safetensors)"
    state: dict[str, torch.Tensor]
    folder: Path | None = None       # the folder of a Hugging Face checkpoint (tokenizer files may sit there)
    hf_config: dict[str, Any] | None = None


def checkpoint_folder(path: str | Path | None) -> Path | None:
    """The folder whose tokenizer files belong with the weights at `path` (a Hugging Face folder), if any."""
    if not path:
        return None
    p = Path(path).expanduser()
    return p if p.is_dir() else None


def read_checkpoint(path: str | Path, what: str = "pretrained weights", trust_pickle: bool = False) -> RawCheckpoint:
    """Read a TorchScript archive, a state dict file or a Hugging Face folder into CPU float tensors.

    `what` names the file's purpose in error messages. Pickled files are read with
    `weights_only=True`; a file that needs arbitrary unpickling is refused unless `trust_pickle`.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {p} (give a local path: OpenAI ViT-B-16.pt, BLIP model_base.pth, "
                                "a state dict file or a Hugging Face model folder; nothing is downloaded)")
    if p.is_dir():
        return _read_hf_folder(p, what, trust_pickle)
    state, source = _read_file(p, what, trust_pickle)
    return RawCheckpoint(p, source, state)


def _read_hf_folder(folder: Path, what: str, trust_pickle: bool) -> RawCheckpoint:
    cfg_path = folder / "config.json"
    hf_config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    for name in HF_WEIGHT_FILES:
        f = folder / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                sp = folder / shard
                if not sp.is_file():
                    raise FileNotFoundError(f"{what}: shard {sp} listed in {f} is missing")
                state.update(_read_file(sp, what, trust_pickle)[0])
        else:
            state = _read_file(f, what, trust_pickle)[0]
        return RawCheckpoint(folder, f"Hugging Face folder ({name})", state, folder, hf_config)
    present = sorted(x.name for x in folder.iterdir())[:12]
    raise FileNotFoundError(f"{what}: the folder {folder} holds no weights file (looked for "
                            f"{', '.join(HF_WEIGHT_FILES)}; found {present or 'nothing'})")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _read_file(path: Path, what: str, trust_pickle: bool) -> tuple[dict[str, torch.Tensor], str]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return _as_state_dict(load_file(str(path)), path, what), "safetensors file"
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI distributes CLIP this way
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return _as_state_dict(dict(module.state_dict()), path, what), "TorchScript archive"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise PretrainedLoadError(
                f"{what}: {path} holds Python objects besides tensors, which are only unpickled from trusted "
                f"files; set backbone.pretrained_trust_pickle: true (load_pretrained(..., trust_pickle=True)) "
                f"if you trust it ({str(err).splitlines()[0]})") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as err:
        raise PretrainedLoadError(f"{what}: cannot read {path} as a PyTorch file: {err}") from None
    return _as_state_dict(obj, path, what), "state dict (torch.save)"


_WRAPPER_KEYS = ("model", "state_dict", "module", "model_state_dict", "net")


def _as_state_dict(obj: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    """Unwrap {"model": {...}} style containers, keep the tensors, drop a common "module." prefix."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise PretrainedLoadError(f"{what}: {path} holds a {type(obj).__name__}, not a state dict")
    for _ in range(3):
        if any(torch.is_tensor(v) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise PretrainedLoadError(f"{what}: {path} holds no tensors (top-level keys: {sorted(map(str, obj))[:10]})")
        obj = inner
    state = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
