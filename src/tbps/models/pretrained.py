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
their initialisation. The image position table is interpolated (bicubic, or bilinear as the official
IRRA code with `pos_interpolation="bilinear"`) from the checkpoint's
square grid to the model's, e.g. 14x14 -> 24x8 for 384x128 images; a longer text position table is
cut to the model's context length.

Every key is accounted for: a tensor the model expects but the checkpoint lacks, a checkpoint
tensor with no place in the model, or a shape that differs raises `PretrainedLoadError` listing
them (layer indices folded, e.g. `blocks.{0-11}.attn.qkv.weight`). Modules that a checkpoint is
known not to contain (a retrieval checkpoint has no text decoder) can be left at their random
initialisation on purpose with `allow_missing=["text_decoder", "lm_head"]`.

Files are read by `pretrained_files` and their keys converted by `pretrained_keys`; this module
matches the converted tensors to a model and copies them in (and re-exports both).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .pretrained_files import HF_WEIGHT_FILES, PretrainedLoadError, RawCheckpoint, checkpoint_folder, read_checkpoint
from .pretrained_keys import EXPORTED_MODULES, LAYOUT_FAMILY, LAYOUT_NAMES, convert_state_dict, detect_layout
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

# ============================================================================ loading into a model

# Which of a model's top-level modules each layout fills; with `allow_missing` others may stay random.
_PROVIDES = EXPORTED_MODULES
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
                    trust_pickle: bool = False, what: str = "pretrained weights",
                    pos_interpolation: str = "bicubic") -> LoadReport:
    """Fill `model` (a `Method` or a `Backbone`) with the checkpoint at `path`; see the module docstring."""
    raw = read_checkpoint(path, what, trust_pickle)
    if raw.hf_config and raw.hf_config.get("model_type") == "bert":
        raise PretrainedLoadError(f"{what}: {raw.path} is a BERT folder (a text model only); it serves CADA's "
                                  "tokenizer (data.tokenizer), not as image-text weights (BLIP's model_base.pth)")
    return load_state(model, raw.state, path=str(raw.path), source=raw.source, allow_missing=allow_missing,
                      pos_interpolation=pos_interpolation)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, path: str = "<state dict>",
               source: str = "in memory", allow_missing: Iterable[str] = (),
               pos_interpolation: str = "bicubic") -> LoadReport:
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
    plan = plan_load(target, converted, left, LAYOUT_FAMILY[layout], tuple(backbone.visual.grid), allow_missing,
                     pos_interpolation)
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
              family: str, grid: tuple[int, int], allow_missing: Iterable[str] = (),
              pos_interpolation: str = "bicubic") -> LoadPlan:
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
            v = _adapt(k, v, want, grid, notes, pos_interpolation)
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


def _adapt(key: str, v: torch.Tensor, want: tuple, grid: tuple[int, int], notes: dict[str, str],
           mode: str = "bicubic") -> torch.Tensor:
    if key == "backbone.visual.positional_embedding" and v.ndim == 2 and v.shape[1] == want[1]:
        try:
            old = square_grid(v.shape[0] - 1)
        except ValueError:
            return v
        if 1 + grid[0] * grid[1] == want[0]:
            notes[key] = f"image position grid {old[0]}x{old[1]} -> {grid[0]}x{grid[1]} ({mode})"
            return interpolate_pos_embedding(v, old, grid, mode)
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
