"""Rendering is byte-identical to the code before `_draw_person` was split into one function per body part.

The references are SHA-256 digests of the raw RGB bytes of every image of the first 24
identities of each preset (seed 0, 64x32 crops, exactly as `tbps synth` draws them), recorded
with the pre-split renderer (commit a916b22). Those 24 identities per preset run every line of
the person-drawing code (checked with a line tracer when the digests were recorded), so any
change in drawing order, colour or random draws changes a digest.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tbps.synth.generator import _draw_identities, _image_plan
from tbps.synth.presets import PRESETS
from tbps.synth.render import render_image, sample_image_params

REFERENCE = {  # preset -> (images, SHA-256 over the per-image digests)
    "tiny": (96, "022f67866de282a18e9e11dbd4b5e524865afdd5681e1031454375caadf081dc"),
    "small": (105, "df798ec5299b566fef9d498efcb954413443b17ec31ac2863a4c70be471bf6d6"),
    "full": (120, "bdc3fda9a7484eda182d941ffa77c07ff3ef5e59ac18c4cbc0ab6ac52219681b"),
}


def image_digests(preset_name: str, seed: int = 0, n_ids: int = 24, height: int = 64, width: int = 32) -> list[str]:
    preset = PRESETS[preset_name]
    out = []
    for ident in _draw_identities(seed, preset)[:n_ids]:
        pid = ident["id"]
        for k, view in enumerate(_image_plan(seed, pid, preset)):
            rng = np.random.default_rng([seed, pid, k])  # as generator._render_identity
            params = sample_image_params(ident, view, rng, preset.difficulty)
            img = render_image(ident, params, height, width, rng, preset.difficulty)
            assert img.size == (width, height) and img.mode == "RGB"
            out.append(hashlib.sha256(img.tobytes()).hexdigest())
    return out


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_rendering_is_byte_identical_to_the_reference(preset: str) -> None:
    digests = image_digests(preset)
    assert (len(digests), hashlib.sha256("".join(digests).encode()).hexdigest()) == REFERENCE[preset]


CAPTION_REFERENCE = {  # preset -> (captions, SHA-256 over them), recorded before the pretraining corpus (issue 12)
    "tiny": (192, "580e5a93a244c70192c260dd8b2ddc6508debe6019ea72cb31b6e8a12499c856"),
    "small": (210, "e14ad1aaa6ae609c381f7f4659928a63c3aeab73ef5955d7a6d7b50236c5bbbf"),
    "full": (240, "30cc6239d3f08960a7f60298a9b6bd2f1a9dec2fa4664169fb67021c4dc64352"),
}


def caption_digest(preset_name: str, seed: int = 0, n_ids: int = 24) -> tuple[int, str]:
    """Captions of the first `n_ids` identities, drawn exactly as `generator._render_identity` draws them."""
    from tbps.synth.captions import make_captions

    preset = PRESETS[preset_name]
    diff = preset.difficulty
    caps: list[str] = []
    for ident in _draw_identities(seed, preset)[:n_ids]:
        pid = ident["id"]
        for k, view in enumerate(_image_plan(seed, pid, preset)):
            rng = np.random.default_rng([seed, pid, k])
            params = sample_image_params(ident, view, rng, diff)
            crng = np.random.default_rng([seed, pid, k, 1])
            caps += make_captions(ident, params, crng, preset.captions_per_image, diff.terse_frac,
                                  diff.mention_prob)[0]
    return len(caps), hashlib.sha256("\n".join(caps).encode()).hexdigest()


@pytest.mark.parametrize("preset", sorted(CAPTION_REFERENCE))
def test_benchmark_captions_are_byte_identical_to_the_reference(preset: str) -> None:
    assert caption_digest(preset) == CAPTION_REFERENCE[preset]
