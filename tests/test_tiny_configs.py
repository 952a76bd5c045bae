"""The tiny configs fine-tune from a shipped foundation of their own widths; *_tiny_scratch keep the
from-scratch route (issue 12). That the shipped files themselves load completely into these configs
is tests/test_foundation.py's check_shipped_foundation."""
from __future__ import annotations

import pytest

import tbps.foundation as foundation
from tbps.engine.experiment import load_experiment_config

FOUNDATION_OF = {"irra_tiny": "tiny-clip", "uca_tiny": "tiny-clip", "cada_tiny": "tiny-blip"}
PRETRAINED_BY = {"tiny-clip": "pretrain_tiny_clip", "tiny-blip": "pretrain_tiny_blip"}


@pytest.mark.parametrize("config", sorted(FOUNDATION_OF))
def test_a_tiny_config_names_a_foundation_of_its_widths(config: str) -> None:
    name = FOUNDATION_OF[config]
    assert name in foundation.EXPECTED  # one the project ships (`make foundation`)
    cfg = load_experiment_config(config)
    assert cfg["backbone"]["pretrained"] == f"foundation:{name}" and cfg["data"]["tokenizer"] == f"foundation:{name}"
    # the model the foundation was pretrained as: same layout, widths, depths and text length
    pre = load_experiment_config(PRETRAINED_BY[name])
    assert cfg["backbone"]["name"] == pre["backbone"]["name"]
    assert cfg["backbone"]["overrides"] == pre["backbone"]["overrides"]
    assert cfg["data"]["max_text_len"] == pre["data"]["max_text_len"]
    if name == "tiny-blip":
        assert cfg["method"]["decoder_layers"] == pre["method"]["decoder_layers"]


@pytest.mark.parametrize("config", sorted(FOUNDATION_OF))
def test_the_scratch_config_is_the_same_model_from_random_weights(config: str) -> None:
    tuned, scratch = load_experiment_config(config), load_experiment_config(f"{config}_scratch")
    assert scratch["backbone"]["pretrained"] is None and scratch["data"]["tokenizer"] == "trained"
    assert scratch["backbone"]["overrides"] == tuned["backbone"]["overrides"]
    # the same model and losses; only the fine-tuning recipe chosen on validation differs (config
    # comments): a lower learning rate, new modules x5, a shorter warm-up, and for IRRA the learnable
    # temperature's start; irra_tiny also trains fewer epochs, to keep `make demo` under 15 minutes
    recipe = {"lr", "new_module_lr_mult", "warmup_epochs", "epochs"}
    assert {k: v for k, v in scratch["train"].items() if k not in recipe} == \
        {k: v for k, v in tuned["train"].items() if k not in recipe}
    assert (tuned["train"]["lr"], tuned["train"]["new_module_lr_mult"], tuned["train"]["warmup_epochs"]) == (3e-4, 5.0, 0.5)
    assert tuned["train"]["lr"] < scratch["train"]["lr"]
    assert {k: v for k, v in scratch["method"].items() if k != "tau_init"} == \
        {k: v for k, v in tuned["method"].items() if k != "tau_init"}
    assert tuned["train"]["epochs"] <= scratch["train"]["epochs"]
