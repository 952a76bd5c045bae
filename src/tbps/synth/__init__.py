"""The embedded benchmark: procedurally rendered pedestrians with attribute-grounded captions.

``generate(out_dir, preset="small", seed=0)`` writes a CUHK-PEDES-layout folder (``reid_raw.json``,
``imgs/``) plus ``attributes.json`` (ground truth and per-image visibility) and ``meta.json``.
Identities come in families of near-duplicates so that retrieval needs every attribute, and a
share of captions is deliberately terse; the knobs live in ``Difficulty`` inside each preset.
"""
from __future__ import annotations

from .analysis import attribute_oracle
from .attributes import (ATTRIBUTE_SLOTS, COLOUR_RGB, COLOURS, HAIR_COLOURS, VARIANT_CHANGES, make_variant,
                         sample_identity)
from .captions import make_captions, tokenize
from .generator import SYNTH_VERSION, generate, is_current, resolve_preset
from .presets import BENCHMARK_PRESETS, PRESETS, Difficulty, Preset
from .render import image_visibility, render_image, sample_image_params

__all__ = [
    "generate",
    "is_current",
    "PRESETS",
    "Preset",
    "Difficulty",
    "ATTRIBUTE_SLOTS",
    "COLOURS",
    "COLOUR_RGB",
    "HAIR_COLOURS",
    "VARIANT_CHANGES",
    "SYNTH_VERSION",
    "resolve_preset",
    "sample_identity",
    "make_variant",
    "make_captions",
    "tokenize",
    "render_image",
    "sample_image_params",
    "image_visibility",
    "attribute_oracle",
]
