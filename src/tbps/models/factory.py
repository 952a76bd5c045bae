"""Named backbone configs and the one factory that builds any of them (open_clip style)."""
from __future__ import annotations

from typing import Any

from .backbone import Backbone, BackboneConfig

BACKBONE_CONFIGS: dict[str, BackboneConfig] = {
    # OpenAI CLIP ViT-B/16 at the person-search resolution (position grid 24x8 from 14x14).
    "clip-vit-b16": BackboneConfig(family="clip", image_size=(384, 128), patch_size=16, vision_width=768,
                                   vision_layers=12, vision_heads=12, text_width=512, text_layers=12, text_heads=8,
                                   context_length=77, vocab_size=49408, embed_dim=512),
    # BLIP base (ViT-B/16 + BERT-base with cross-attention), 224x224 as in the official CADA code;
    # BERT's dropout 0.1 as in BLIP's med_config.json.
    "blip-base": BackboneConfig(family="blip", image_size=(224, 224), patch_size=16, vision_width=768,
                                vision_layers=12, vision_heads=12, text_width=768, text_layers=12, text_heads=12,
                                context_length=512, vocab_size=30524, embed_dim=256, text_cross_attention=True,
                                text_dropout=0.1),
    # The same classes, scaled down for CPU training from scratch on the embedded benchmark.
    "tiny-clip": BackboneConfig(family="clip", image_size=(128, 64), patch_size=16, vision_width=256,
                                vision_layers=4, vision_heads=4, text_width=256, text_layers=4, text_heads=4,
                                context_length=64, vocab_size=4000, embed_dim=256),
    "tiny-blip": BackboneConfig(family="blip", image_size=(128, 64), patch_size=16, vision_width=256,
                                vision_layers=4, vision_heads=4, text_width=256, text_layers=4, text_heads=4,
                                context_length=64, vocab_size=4000, embed_dim=256, text_cross_attention=True),
}


def backbone_config(name: str, **overrides: Any) -> BackboneConfig:
    try:
        cfg = BACKBONE_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONE_CONFIGS))}") from None
    return cfg.with_overrides(**overrides) if overrides else cfg


def build_backbone(name_or_cfg: str | BackboneConfig | dict, **overrides: Any) -> Backbone:
    """Build a randomly initialised backbone from a named config (plus field overrides) or a config."""
    if isinstance(name_or_cfg, BackboneConfig):
        cfg = name_or_cfg.with_overrides(**overrides) if overrides else name_or_cfg
    elif isinstance(name_or_cfg, dict):
        cfg = BackboneConfig.from_dict({**name_or_cfg, **overrides})
    else:
        cfg = backbone_config(name_or_cfg, **overrides)
    return Backbone(cfg)
