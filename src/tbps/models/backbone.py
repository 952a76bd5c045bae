"""The shared backbone: image encoder, text encoder and projections to the joint space.

Every method builds on `Backbone`. Families differ only in sizes, norms and where the text's
global feature sits (CLIP: the EOT position; BLIP/BERT: position 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
from torch import nn

from .text import BertTextModel, CausalTextTransformer
from .vision import VisionTransformer


@dataclass(frozen=True)
class BackboneConfig:
    family: str  # "clip" or "blip"
    image_size: tuple[int, int]  # (height, width)
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int
    vocab_size: int
    embed_dim: int
    text_cross_attention: bool = False  # BLIP: every text layer can read image tokens
    grad_checkpointing: bool = False
    text_dropout: float = 0.0  # BLIP layout: BERT's hidden and attention-probability dropout (BLIP: 0.1)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown backbone config field(s) {unknown}; known: {sorted(known)}")
        d = dict(d)
        d["image_size"] = tuple(d["image_size"])
        return cls(**d)

    def with_overrides(self, **kw: Any) -> "BackboneConfig":
        if "image_size" in kw:
            kw["image_size"] = tuple(kw["image_size"])
        return replace(self, **kw)


class Backbone(nn.Module):
    """Image and text towers plus linear projections into a shared `embed_dim` space."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.family == "clip":
            self.visual = VisionTransformer(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
                                            cfg.vision_heads, act="quick_gelu", ln_pre=True, conv_bias=False,
                                            grad_checkpointing=cfg.grad_checkpointing)
            self.text = CausalTextTransformer(cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers,
                                              cfg.text_heads, grad_checkpointing=cfg.grad_checkpointing)
            bias = False
        elif cfg.family == "blip":
            self.visual = VisionTransformer(cfg.image_size, cfg.patch_size, cfg.vision_width, cfg.vision_layers,
                                            cfg.vision_heads, act="gelu", ln_pre=False, conv_bias=True, eps=1e-6,
                                            grad_checkpointing=cfg.grad_checkpointing)
            self.text = BertTextModel(cfg.vocab_size, cfg.context_length, cfg.text_width, cfg.text_layers,
                                      cfg.text_heads, cross_width=cfg.vision_width if cfg.text_cross_attention else None,
                                      grad_checkpointing=cfg.grad_checkpointing, dropout=cfg.text_dropout)
            bias = True
        else:
            raise ValueError(f"unknown backbone family {cfg.family!r}; use 'clip' or 'blip'")
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_dim, bias=bias)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=bias)
        nn.init.normal_(self.image_proj.weight, std=cfg.vision_width ** -0.5)
        nn.init.normal_(self.text_proj.weight, std=cfg.text_width ** -0.5)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (global embedding [B, embed_dim], all tokens [B, 1 + P, vision_width])."""
        tokens = self.visual(images)
        return self.image_proj(tokens[:, 0]), tokens

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor,
                    eot_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (global embedding [B, embed_dim], all tokens [B, L, text_width])."""
        tokens = self.text(ids, attention_mask)
        if self.cfg.family == "clip":
            if eot_index is None:
                eot_index = attention_mask.long().sum(1) - 1
            pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), eot_index]
        else:
            pooled = tokens[:, 0]
        return self.text_proj(pooled), tokens
