"""Encoders, fusion blocks and heads; `build_backbone` makes any named config, `load_pretrained` fills it."""
from .backbone import Backbone, BackboneConfig
from .factory import BACKBONE_CONFIGS, backbone_config, build_backbone
from .pretrained import PretrainedLoadError, load_pretrained

__all__ = ["Backbone", "BackboneConfig", "BACKBONE_CONFIGS", "backbone_config", "build_backbone",
           "load_pretrained", "PretrainedLoadError"]
