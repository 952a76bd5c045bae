"""Encoders, fusion blocks and heads; `build_backbone` makes any named config."""
from .backbone import Backbone, BackboneConfig
from .factory import BACKBONE_CONFIGS, backbone_config, build_backbone

__all__ = ["Backbone", "BackboneConfig", "BACKBONE_CONFIGS", "backbone_config", "build_backbone"]
