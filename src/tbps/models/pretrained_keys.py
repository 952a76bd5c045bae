"""Pretrained key conversion: recognise a checkpoint's layout from its key names and rename its
tensors to ours (OpenAI / Hugging Face CLIP, salesforce / Hugging Face BLIP -> tbps modules)."""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Mapping

import torch

from .pretrained_files import PretrainedLoadError

__all__ = ["LAYOUT_NAMES", "LAYOUT_FAMILY", "EXPORTED_MODULES", "detect_layout", "convert_state_dict",
           "export_state_dict"]

LAYOUT_NAMES = {
    "openai-clip": "OpenAI CLIP",
    "hf-clip": "Hugging Face CLIP",
    "blip": "BLIP (salesforce/BLIP)",
    "hf-blip": "Hugging Face BLIP",
}
LAYOUT_FAMILY = {"openai-clip": "clip", "hf-clip": "clip", "blip": "blip", "hf-blip": "blip"}



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


# ============================================================================ ours -> a layout (export)

#: The top-level modules of a model each family's export holds (what its loader fills back).
EXPORTED_MODULES = {"clip": ("backbone",), "blip": ("backbone", "itm_head", "text_decoder", "lm_head")}
_BLIP_PREFIXES = (("backbone.image_proj.", "vision_proj."), ("backbone.text_proj.", "text_proj."),
                  ("itm_head.", "itm_head."), ("backbone.text.", "text_encoder."),
                  ("text_decoder.", "text_decoder.bert."),
                  ("lm_head.transform.", "text_decoder.cls.predictions.transform."),
                  ("lm_head.decoder.", "text_decoder.cls.predictions.decoder."))


def export_state_dict(state: Mapping[str, torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """A model's tensors (our names) -> an OpenAI-CLIP ("clip") or salesforce-BLIP ("blip") state dict:
    the inverse of `convert_state_dict` on the modules in `EXPORTED_MODULES`; other tensors are left out."""
    if family not in EXPORTED_MODULES:
        raise ValueError(f"unknown layout family {family!r}; use clip or blip")
    out: dict[str, torch.Tensor] = {}
    block_re = re.compile(r"backbone\.visual\.transformer\.resblocks\.(\d+)\.(.+)")
    for k, v in state.items():
        if not k.startswith(tuple(m + "." for m in EXPORTED_MODULES[family])):
            continue
        v = v.detach().cpu().contiguous()
        if family == "clip":
            if k in ("backbone.image_proj.weight", "backbone.text_proj.weight"):  # F.linear(x, W) == x @ W.T
                out["visual.proj" if "image" in k else "text_projection"] = v.t().contiguous()
            elif k.startswith("backbone.visual."):
                out[k[len("backbone."):]] = v
            elif k.startswith("backbone.text."):
                out[k[len("backbone.text."):]] = v
            else:
                raise ValueError(f"export: {k} has no place in an OpenAI CLIP state dict")
            continue
        rest = k[len("backbone.visual."):] if k.startswith("backbone.visual.") else None
        if rest == "class_embedding":
            out["visual_encoder.cls_token"] = v.reshape(1, 1, -1)
        elif rest == "positional_embedding":
            out["visual_encoder.pos_embed"] = v.unsqueeze(0)
        elif rest is not None and rest.startswith("conv1."):
            out["visual_encoder.patch_embed.proj." + rest[len("conv1."):]] = v
        elif rest is not None and rest.startswith("ln_post."):
            out["visual_encoder.norm." + rest[len("ln_post."):]] = v
        elif (m := block_re.fullmatch(k)) is not None:
            ours = next((o for o in _VIT_BLOCK if m[2] == o or m[2].startswith(o + ".")), None)
            if ours is None:
                raise ValueError(f"export: {k} has no place in a BLIP state dict")
            out[f"visual_encoder.blocks.{m[1]}.{_VIT_BLOCK[ours][0]}{m[2][len(ours):]}"] = v
        elif (pre := next((p for p in _BLIP_PREFIXES if k.startswith(p[0])), None)) is not None:
            out[pre[1] + k[len(pre[0]):]] = v
        else:
            raise ValueError(f"export: {k} has no place in a BLIP state dict")
    if "text_decoder.cls.predictions.decoder.bias" in out:  # BLIP's files hold the LM bias under both names
        out["text_decoder.cls.predictions.bias"] = out["text_decoder.cls.predictions.decoder.bias"]
    return out
