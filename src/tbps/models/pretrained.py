"""Full-size pretrained weights from local files; nothing is ever downloaded.

`load_pretrained(model, path)` reads a checkpoint, recognises its layout from the key names,
renames the tensors to ours and copies them into a `Method` (or a bare `Backbone`). Supported:

| what | file | layout |
|---|---|---|
| OpenAI CLIP ViT-B/16 as distributed | `ViT-B-16.pt` (TorchScript archive) | `openai-clip` |
| the same as a plain state dict (also OpenCLIP's ViTs) | `.pt` / `.pth` / `.bin` / `.safetensors` | `openai-clip` |
| Hugging Face CLIP folder (`CLIPModel`) | `config.json` + `model.safetensors` / `pytorch_model.bin` | `hf-clip` |
| BLIP base as distributed | `model_base.pth` (`{"model": state_dict}`) | `blip` |
| Hugging Face BLIP folder (`BlipForImageTextRetrieval`, `BlipForConditionalGeneration`) | folder | `hf-blip` |

BLIP checkpoints fill the whole CADA model: the image encoder, the image-grounded text encoder
(with its cross-attention), the projections, the ITM head, and (when the file has one, as
`model_base.pth` does) the text decoder with its LM head. Momentum encoders, queues and the
temperature are skipped. CLIP checkpoints fill the backbone; IRRA's / UCA's own modules stay at
their initialisation. The image position table is interpolated (bicubic) from the checkpoint's
square grid to the model's, e.g. 14x14 -> 24x8 for 384x128 images; a longer text position table is
cut to the model's context length.

Every key is accounted for: a tensor the model expects but the checkpoint lacks, a checkpoint
tensor with no place in the model, or a shape that differs raises `PretrainedLoadError` listing
them (layer indices folded, e.g. `blocks.{0-11}.attn.qkv.weight`). Modules that a checkpoint is
known not to contain (a retrieval checkpoint has no text decoder) can be left at their random
initialisation on purpose with `allow_missing=["text_decoder", "lm_head"]`.
"""
from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .vision import interpolate_pos_embedding, square_grid

__all__ = [
    "PretrainedLoadError",
    "RawCheckpoint",
    "LoadReport",
    "read_checkpoint",
    "detect_layout",
    "convert_state_dict",
    "load_pretrained",
    "checkpoint_folder",
    "HF_WEIGHT_FILES",
]

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")

LAYOUT_NAMES = {
    "openai-clip": "OpenAI CLIP",
    "hf-clip": "Hugging Face CLIP",
    "blip": "BLIP (salesforce/BLIP)",
    "hf-blip": "Hugging Face BLIP",
}
LAYOUT_FAMILY = {"openai-clip": "clip", "hf-clip": "clip", "blip": "blip", "hf-blip": "blip"}


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
    if path.stat().st_size == 0:
        raise PretrainedLoadError(f"{what}: {path} is empty (0 bytes), not a checkpoint")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _as_state_dict(load_file(str(path)), path, what), "safetensors file"
        except (SafetensorError, OSError) as err:
            raise PretrainedLoadError(f"{what}: {path} is not a readable safetensors file ({err}): truncated "
                                      "or not a checkpoint") from None
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI distributes CLIP this way
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
        return _as_state_dict(dict(module.state_dict()), path, what), "TorchScript archive"
    not_torch = _not_a_torch_file(path)
    if not_torch:
        raise PretrainedLoadError(f"{what}: {path} is not a PyTorch checkpoint ({not_torch}); expected a file "
                                  "written by torch.save, a TorchScript archive, a .safetensors file or a Hugging "
                                  "Face model folder")
    unreadable = (RuntimeError, EOFError, OSError, IndexError, KeyError, ValueError, pickle.UnpicklingError)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # "Unsupported global": real Python objects besides tensors. Anything else is a damaged file.
        if "Unsupported global" not in str(err):
            raise PretrainedLoadError(f"{what}: cannot read {path} as a PyTorch file: it is truncated or "
                                      f"corrupt ({_weights_only_reason(err)})") from None
        if not trust_pickle:
            raise PretrainedLoadError(
                f"{what}: {path} holds Python objects besides tensors, which are only unpickled from trusted "
                f"files; set backbone.pretrained_trust_pickle: true (load_pretrained(..., trust_pickle=True)) "
                f"if you trust it ({_weights_only_reason(err)})") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except unreadable as err2:
            raise PretrainedLoadError(f"{what}: cannot read {path} as a PyTorch file: {err2}") from None
    except unreadable as err:
        raise PretrainedLoadError(f"{what}: cannot read {path} as a PyTorch file: it is truncated or corrupt "
                                  f"({type(err).__name__}: {err})") from None
    return _as_state_dict(obj, path, what), "state dict (torch.save)"


def _not_a_torch_file(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file (a zip archive, or a pickle for the legacy format), or None."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # a zip archive (maybe truncated) or a legacy pickle
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        return f"it is a text file starting {text.strip()[:30]!r}"
    return "neither a zip archive nor a pickle"


def _weights_only_reason(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln or "WeightsUnpickler error" in ln]
    return next((ln for ln in lines if "Unsupported" in ln), str(err).splitlines()[0] if str(err) else "")


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


# ============================================================================ layouts and key maps

def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    keys = set(state)
    if "visual.class_embedding" in keys or "visual.conv1.weight" in keys:
        return "openai-clip"
    if any(k.startswith("vision_model.embeddings.patch_embedding") for k in keys):
        if any(k.startswith("text_model.") for k in keys):
            return "hf-clip"
        if any(k.startswith(("text_encoder.", "text_decoder.")) for k in keys):
            return "hf-blip"
        if "vision_model.pre_layrnorm.weight" in keys:
            return "hf-clip"
    if "visual_encoder.cls_token" in keys or any(k.startswith("visual_encoder.blocks.") for k in keys):
        return "blip"
    if "text_model.embeddings.token_embedding.weight" in keys:
        return "hf-clip"
    sample = sorted(keys)[:8]
    raise PretrainedLoadError(
        "unrecognised checkpoint layout: expected OpenAI CLIP (visual.*, transformer.*), Hugging Face CLIP "
        "(vision_model.*, text_model.*), BLIP (visual_encoder.*, text_encoder.*) or Hugging Face BLIP "
        f"(vision_model.*, text_encoder.*) keys; the first keys are {sample}")


# Keys deliberately skipped (never an error): training state that has no place in our models.
_IGNORED = {
    "openai-clip": [r"logit_scale", r"input_resolution", r"context_length", r"vocab_size"],
    "hf-clip": [r"logit_scale", r".*\.position_ids"],
    "blip": [r"\w+_m\..*", r"image_queue", r"text_queue", r"idx_queue", r"queue_ptr", r"ptr_queue", r"temp",
             r".*\.position_ids", r"text_encoder\.pooler\..*"],
}
_IGNORED["hf-blip"] = _IGNORED["blip"] + [r"logit_scale"]

# Renames applied in order; the first matching pattern wins. `{n}` in a replacement is the layer index.
_VIT_BLOCK = {  # one ViT block: ours (OpenAI names) <- timm/BLIP and HF BLIP names
    "ln_1": ("norm1", "layer_norm1"),
    "attn.in_proj_weight": ("attn.qkv.weight", "self_attn.qkv.weight"),
    "attn.in_proj_bias": ("attn.qkv.bias", "self_attn.qkv.bias"),
    "attn.out_proj": ("attn.proj", "self_attn.projection"),
    "ln_2": ("norm2", "layer_norm2"),
    "mlp.c_fc": ("mlp.fc1", "mlp.fc1"),
    "mlp.c_proj": ("mlp.fc2", "mlp.fc2"),
}
_HF_CLIP_BLOCK = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def _openai_clip(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    left: list[str] = []
    for k, v in state.items():
        if k == "visual.proj":
            out["backbone.image_proj.weight"] = v.t() if v.ndim == 2 else v  # x @ proj == F.linear(x, proj.T)
        elif k == "text_projection":
            out["backbone.text_proj.weight"] = v.t() if v.ndim == 2 else v  # other ranks: reported as a shape mismatch
        elif k.startswith("visual."):
            out["backbone." + k] = v
        elif k == "token_embedding.weight":
            out["backbone.text.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["backbone.text.positional_embedding"] = v
        elif k.startswith(("transformer.", "ln_final.")):
            out["backbone.text." + k] = v
        else:
            left.append(k)
    return out, left


def _hf_clip(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out: dict[str, torch.Tensor] = {}
    left: list[str] = []
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = defaultdict(dict)
    fixed = {
        "vision_model.embeddings.class_embedding": "backbone.visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "backbone.visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "backbone.visual.positional_embedding",
        "text_model.embeddings.token_embedding.weight": "backbone.text.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "backbone.text.positional_embedding",
        "visual_projection.weight": "backbone.image_proj.weight",
        "text_projection.weight": "backbone.text_proj.weight",
    }
    prefix = {"vision_model.pre_layrnorm.": "backbone.visual.ln_pre.",
              "vision_model.post_layernorm.": "backbone.visual.ln_post.",
              "text_model.final_layer_norm.": "backbone.text.ln_final."}
    layer_re = re.compile(r"(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)")
    for k, v in state.items():
        if k in fixed:
            out[fixed[k]] = v
            continue
        pre = next((p for p in prefix if k.startswith(p)), None)
        if pre is not None:
            out[prefix[pre] + k[len(pre):]] = v
            continue
        m = layer_re.fullmatch(k)
        if m is None:
            left.append(k)
            continue
        tower = "visual" if m[1] == "vision" else "text"
        base = f"backbone.{tower}.transformer.resblocks.{m[2]}."
        rest = m[3]
        pm = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if pm:
            qkv[(base, pm[2], k.rsplit(".", 3)[0])][pm[1]] = v
            continue
        for theirs, ours in _HF_CLIP_BLOCK.items():
            if rest.startswith(theirs + "."):
                out[base + ours + rest[len(theirs):]] = v
                break
        else:
            left.append(k)
    for (base, kind, src), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[base + f"attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:  # an incomplete q/k/v triple cannot be packed: report what is there
            left += [f"{src}.self_attn.{p}_proj.{kind}" for p in sorted(parts)]
    return out, left


def _blip(state: dict[str, torch.Tensor], hf: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """salesforce/BLIP (timm ViT + med.py BERT) or Hugging Face BLIP names -> ours (CADA's modules)."""
    out: dict[str, torch.Tensor] = {}
    left: list[str] = []
    if hf:
        vis = "vision_model."
        fixed = {vis + "embeddings.class_embedding": "class_embedding",
                 vis + "embeddings.position_embedding": "positional_embedding",
                 vis + "embeddings.patch_embedding.weight": "conv1.weight",
                 vis + "embeddings.patch_embedding.bias": "conv1.bias"}
        norm, block_re, col = vis + "post_layernorm.", re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)"), 1
    else:
        vis = "visual_encoder."
        fixed = {vis + "cls_token": "class_embedding", vis + "pos_embed": "positional_embedding",
                 vis + "patch_embed.proj.weight": "conv1.weight", vis + "patch_embed.proj.bias": "conv1.bias"}
        norm, block_re, col = vis + "norm.", re.compile(r"visual_encoder\.blocks\.(\d+)\.(.+)"), 0
    heads = {"vision_proj.": "backbone.image_proj.", "text_proj.": "backbone.text_proj.", "itm_head.": "itm_head.",
             "itm_local_head.": "group_head.",  # CADA's released checkpoints name the group head so
             "text_encoder.": "backbone.text.", "text_decoder.bert.": "text_decoder.",
             "text_decoder.cls.predictions.transform.": "lm_head.transform.",
             "text_decoder.cls.predictions.decoder.": "lm_head.decoder."}
    for k, v in state.items():
        if k in fixed:
            name = fixed[k]
            if name == "class_embedding":  # [1, 1, D] -> [D]
                v = v.reshape(-1)
            elif name == "positional_embedding":  # [1, 1 + P, D] -> [1 + P, D]
                v = v.reshape(-1, v.shape[-1]) if v.ndim else v
            out["backbone.visual." + name] = v
        elif k.startswith(norm):
            out["backbone.visual.ln_post." + k[len(norm):]] = v
        elif (m := block_re.fullmatch(k)) is not None:
            base, rest = f"backbone.visual.transformer.resblocks.{m[1]}.", m[2]
            for ours, theirs in _VIT_BLOCK.items():
                t = theirs[col]
                if rest == t or rest.startswith(t + "."):
                    out[base + ours + rest[len(t):]] = v
                    break
            else:
                left.append(k)
        elif k == "text_decoder.cls.predictions.bias":
            out.setdefault("lm_head.decoder.bias", v)
        elif (pre := next((p for p in heads if k.startswith(p)), None)) is not None:
            out[heads[pre] + k[len(pre):]] = v
        else:
            left.append(k)
    # Tied tensors that a Hugging Face save may have written only once.
    if "lm_head.transform.dense.weight" in out and "lm_head.decoder.weight" not in out \
            and "text_decoder.embeddings.word_embeddings.weight" in out:
        out["lm_head.decoder.weight"] = out["text_decoder.embeddings.word_embeddings.weight"]
    return out, left


def convert_state_dict(state: Mapping[str, torch.Tensor], layout: str | None = None
                       ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Checkpoint tensors -> (our names as in a `Method`: "backbone.*", "text_decoder.*", ...,
    ignored checkpoint keys, checkpoint keys with no mapping). Floating tensors become float32."""
    layout = layout or detect_layout(state)
    if layout not in LAYOUT_NAMES:
        raise ValueError(f"unknown layout {layout!r}; known: {sorted(LAYOUT_NAMES)}")
    ignore = re.compile("|".join(f"(?:{p})" for p in _IGNORED[layout]))
    kept = {k: v for k, v in state.items() if not ignore.fullmatch(k)}
    ignored = sorted(k for k in state if k not in kept)
    if layout == "openai-clip":
        out, left = _openai_clip(kept)
    elif layout == "hf-clip":
        out, left = _hf_clip(kept)
    else:
        out, left = _blip(kept, hf=layout == "hf-blip")
    out = {k: (v.float() if v.is_floating_point() else v) for k, v in out.items()}
    return out, ignored, sorted(left)


# ============================================================================ loading into a model

# Which of a model's top-level modules each layout fills; with `allow_missing` others may stay random.
_PROVIDES = {"clip": ("backbone",), "blip": ("backbone", "itm_head", "text_decoder", "lm_head")}
_TEXT_POSITIONS = ("backbone.text.positional_embedding", "backbone.text.embeddings.position_embeddings.weight",
                   "text_decoder.embeddings.position_embeddings.weight")
_VOCAB_KEYS = ("backbone.text.token_embedding.weight", "backbone.text.embeddings.word_embeddings.weight",
               "text_decoder.embeddings.word_embeddings.weight", "lm_head.decoder.weight", "lm_head.decoder.bias")


@dataclass
class LoadReport:
    path: str
    source: str
    layout: str
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)     # checkpoint keys skipped on purpose (momentum, queues ...)
    unused: list[str] = field(default_factory=list)      # converted keys for modules this model does not have
    kept_random: list[str] = field(default_factory=list)  # model keys left at initialisation (allow_missing)
    notes: list[str] = field(default_factory=list)       # interpolations, truncations

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} tensors from {self.path} ({LAYOUT_NAMES[self.layout]}, {self.source})"]
        parts += self.notes
        if self.ignored:
            parts.append(f"skipped {len(self.ignored)} training-only tensors ({_fold(self.ignored, 6)})")
        if self.unused:
            parts.append(f"{len(self.unused)} tensors unused by this model ({_fold(self.unused, 4)})")
        if self.kept_random:
            parts.append(f"{len(self.kept_random)} tensors left at random init ({_fold(self.kept_random, 4)})")
        return "; ".join(parts)


def load_pretrained(model: nn.Module, path: str | Path, *, allow_missing: Iterable[str] = (),
                    trust_pickle: bool = False, what: str = "pretrained weights") -> LoadReport:
    """Fill `model` (a `Method` or a `Backbone`) with the checkpoint at `path`; see the module docstring."""
    raw = read_checkpoint(path, what, trust_pickle)
    if raw.hf_config and raw.hf_config.get("model_type") == "bert":
        raise PretrainedLoadError(f"{what}: {raw.path} is a BERT folder (a text model only); it serves CADA's "
                                  "tokenizer (data.tokenizer), not as image-text weights (BLIP's model_base.pth)")
    return load_state(model, raw.state, path=str(raw.path), source=raw.source, allow_missing=allow_missing)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str = "<state dict>",
               source: str = "in memory", allow_missing: Iterable[str] = ()) -> LoadReport:
    try:
        layout = detect_layout(state)
    except PretrainedLoadError as err:
        raise PretrainedLoadError(f"{path}: {err}") from None
    converted, ignored, left = convert_state_dict(state, layout)
    backbone = _backbone_of(model)
    family = backbone.cfg.family
    if LAYOUT_FAMILY[layout] != family:
        need = "clip-vit-b16 (irra, uca)" if LAYOUT_FAMILY[layout] == "clip" else "blip-base (cada)"
        raise PretrainedLoadError(
            f"{path} holds {LAYOUT_NAMES[layout]} weights ({LAYOUT_FAMILY[layout]} layout), but the model's backbone "
            f"is the {family} layout; use backbone.name: {need} with these weights")
    bare = model is backbone  # a bare Backbone: our converted names carry "backbone."
    target = {("backbone." + k if bare else k): v.shape for k, v in model.state_dict().items()}
    plan = plan_load(target, converted, left, LAYOUT_FAMILY[layout], tuple(backbone.visual.grid), allow_missing)
    report = LoadReport(path, source, layout, ignored=ignored, unused=plan.unused, kept_random=plan.kept_random,
                        notes=plan.notes)
    if plan.errors():
        raise PretrainedLoadError(plan.message(path, LAYOUT_NAMES[layout], type(model).__name__))
    tensors = {k[len("backbone."):]: v for k, v in plan.tensors.items()} if bare else plan.tensors
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:  # cannot happen after planning; guard against silent partial loads anyway
        raise PretrainedLoadError(f"internal error: unexpected keys after planning: {unexpected[:5]}")
    report.loaded = len(tensors)
    return report


def _backbone_of(model: nn.Module):
    from .backbone import Backbone

    if isinstance(model, Backbone):
        return model
    bb = getattr(model, "backbone", None)
    if isinstance(bb, Backbone):
        return bb
    raise TypeError(f"load_pretrained needs a Method or a Backbone, got {type(model).__name__}")


@dataclass
class LoadPlan:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    absent_modules: dict[str, int] = field(default_factory=dict)  # modules of which the checkpoint has nothing
    unused: list[str] = field(default_factory=list)
    kept_random: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def errors(self) -> bool:
        return bool(self.missing or self.unexpected or self.mismatched)

    def message(self, path: str, layout: str, model_name: str) -> str:
        lines = [f"cannot load {layout} weights from {path} into {model_name}:"]
        if self.missing:
            lines.append(f"  {len(self.missing)} missing keys (in the model, not in the checkpoint):")
            lines += [f"    {m}.* (all {n} tensors: the checkpoint has no {m})" for m, n in self.absent_modules.items()]
            partial = [k for k in self.missing if k.split(".")[0] not in self.absent_modules]
            lines += ["    " + s for s in _fold_lines(partial)]
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected keys (in the checkpoint, no place in the model):")
            lines += ["    " + s for s in _fold_lines(self.unexpected)]
        if self.mismatched:
            lines.append(f"  {len(self.mismatched)} shape mismatches (checkpoint vs model):")
            lines += [f"    {k}: {list(a)} vs {list(b)}" for k, a, b in self.mismatched[:20]]
            if any(k in _VOCAB_KEYS for k, _, _ in self.mismatched):
                lines.append("  hint: the text vocabulary differs from the checkpoint's: use the tokenizer that goes "
                             "with these weights (clip-bpe for CLIP; bert-base-uncased's vocab.txt + [DEC]/[ENC] "
                             "for BLIP, 30524 ids)")
            else:
                lines.append("  hint: the backbone size differs from the checkpoint's: check backbone.name and "
                             "backbone.overrides (full-size weights need clip-vit-b16 or blip-base)")
        missing_mods = sorted(set(self.absent_modules) - {"backbone"})
        if missing_mods:
            lines.append(f"  hint: this checkpoint has no {', '.join(missing_mods)}; to keep them at random init "
                         f"set backbone.pretrained_allow_missing: {missing_mods} (BLIP's model_base.pth has the "
                         "text decoder)")
        return "\n".join(lines)


def plan_load(target: Mapping[str, torch.Size], converted: Mapping[str, torch.Tensor], unmapped: Iterable[str],
              family: str, grid: tuple[int, int], allow_missing: Iterable[str] = ()) -> LoadPlan:
    """Match converted tensors to the model's keys and shapes (adapting position tables) without copying."""
    plan = LoadPlan()
    modules = {k.split(".")[0] for k in target}
    allow = tuple(a.rstrip(".") for a in allow_missing)
    plan.unexpected += list(unmapped)
    notes: dict[str, str] = {}
    for k, v in converted.items():
        if k.split(".")[0] not in modules:
            plan.unused.append(k)
            continue
        if k not in target:
            plan.unexpected.append(k)
            continue
        want = tuple(target[k])
        if tuple(v.shape) != want:
            v = _adapt(k, v, want, grid, notes)
        if tuple(v.shape) != want:
            plan.mismatched.append((k, tuple(v.shape), want))
            continue
        plan.tensors[k] = v
    plan.notes = list(dict.fromkeys(notes.values()))
    provides = set(_PROVIDES[family])
    if "group_head.weight" in converted:
        provides.add("group_head")
    for k in target:
        if k.split(".")[0] in provides and k not in converted:
            if any(k == a or k.startswith(a + ".") for a in allow):
                plan.kept_random.append(k)
            else:
                plan.missing.append(k)
    have = {k.split(".")[0] for k in plan.tensors} | {k.split(".")[0] for k, _, _ in plan.mismatched}
    for k in plan.missing:
        mod = k.split(".")[0]
        if mod not in have:
            plan.absent_modules[mod] = plan.absent_modules.get(mod, 0) + 1
    plan.unexpected.sort()
    return plan


def _adapt(key: str, v: torch.Tensor, want: tuple, grid: tuple[int, int], notes: dict[str, str]) -> torch.Tensor:
    if key == "backbone.visual.positional_embedding" and v.ndim == 2 and v.shape[1] == want[1]:
        try:
            old = square_grid(v.shape[0] - 1)
        except ValueError:
            return v
        if 1 + grid[0] * grid[1] == want[0]:
            notes[key] = f"image position grid {old[0]}x{old[1]} -> {grid[0]}x{grid[1]} (bicubic)"
            return interpolate_pos_embedding(v, old, grid)
    if key in _TEXT_POSITIONS and v.ndim == 2 and v.shape[1] == want[1] and v.shape[0] > want[0]:
        notes[key] = f"text positions cut from {v.shape[0]} to {want[0]}"
        return v[: want[0]]
    return v


# ============================================================================ key listing helpers

def _fold_lines(keys: Iterable[str], limit: int = 30) -> list[str]:
    """Group keys that differ only in layer indices: 'a.{0-11}.b (12 keys)'."""
    groups: dict[str, list[int]] = defaultdict(list)
    order: list[str] = []
    for k in keys:
        nums = re.findall(r"\.(\d+)\.", k)
        pattern = re.sub(r"\.\d+\.", ".{N}.", k, count=1)
        if pattern not in groups:
            order.append(pattern)
        groups[pattern].append(int(nums[0]) if nums else -1)
    lines = []
    for pattern in order:
        idx = sorted(set(i for i in groups[pattern] if i >= 0))
        if idx and "{N}" in pattern:
            span = f"{idx[0]}-{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) and len(idx) > 1 else \
                ",".join(map(str, idx))
            lines.append(pattern.replace("{N}", "{" + span + "}"))
        else:
            lines.append(pattern)
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more groups"]
    return lines


def _fold(keys: list[str], limit: int) -> str:
    """One line: keys grouped by their first component, e.g. 'visual_encoder_m.* (152), temp'."""
    groups: dict[str, int] = {}
    for k in keys:
        head = k.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    items = [f"{h}.* ({n})" if n > 1 or h not in keys else h for h, n in groups.items()]
    return ", ".join(items[:limit] + ([f"... {len(items) - limit} more"] if len(items) > limit else []))
