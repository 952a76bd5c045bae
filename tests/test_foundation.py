"""Shipped foundations (issue 12): the `foundation:<name>` reference, `tbps foundation ship`, the shipped files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tbps
import tbps.foundation as foundation
from tbps.cli import main
from tbps.engine.build import build_model, build_tokenizer
from tbps.engine.experiment import load_experiment_config
from tbps.engine.foundation import foundation_state

# the tiny widths of tests/test_pretrain.py: a model that builds in well under a second
SMALL = ["backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, text_heads: 2, "
         "text_layers: 1, embed_dim: 32}", "data.image_size=[32, 16]", "data.max_text_len=24",
         "data.cache_images=false", "train.device=cpu", "train.amp=null"]


def _fake_foundation(root: Path, name: str = "tiny-clip") -> dict[str, torch.Tensor]:
    """A clip-layout foundation folder made from a randomly initialised model; returns our state dict."""
    cfg = load_experiment_config("irra_tiny_scratch", [*SMALL, "data.tokenizer=clip-bpe"])
    tok = build_tokenizer(cfg, None, None)
    method = build_model(cfg, tok, num_classes=4)
    _, state = foundation_state(method)
    (root / name).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / name / foundation.MODEL_FILE))
    tok.save(root / name / foundation.TOKENIZER_DIR)
    return method.state_dict()


def test_the_foundation_folder_is_found_through_the_installed_package() -> None:
    assert foundation.foundation_root() == Path(tbps.__file__).parent / "foundation"
    assert foundation.foundation_root().is_dir()


def test_a_reference_resolves_to_the_weights_or_the_tokenizer_of_a_shipped_foundation(tmp_path: Path) -> None:
    assert foundation.shipped(tmp_path) == []
    (tmp_path / "tiny-clip" / "tokenizer").mkdir(parents=True)
    (tmp_path / "tiny-clip" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "half-made").mkdir()  # no weights: not shipped
    assert foundation.shipped(tmp_path) == ["tiny-clip"]
    assert foundation.resolve("foundation:tiny-clip", "backbone.pretrained", tmp_path) == \
        str(tmp_path / "tiny-clip" / "model.safetensors")
    assert foundation.resolve("foundation:tiny-clip", "data.tokenizer", tmp_path) == str(tmp_path / "tiny-clip" / "tokenizer")
    for plain in ("clip-bpe", "trained", "/some/ViT-B-16.pt", None):  # anything else passes through
        assert foundation.resolve(plain, "data.tokenizer", tmp_path) == plain
    with pytest.raises(FileNotFoundError) as err:
        foundation.resolve("foundation:half-made", "backbone.pretrained", tmp_path)
    msg = str(err.value)
    assert "backbone.pretrained" in msg and "'foundation:half-made'" in msg and "foundation:tiny-clip" in msg
    with pytest.raises(ValueError, match="train.lr"):
        foundation.resolve("foundation:tiny-clip", "train.lr", tmp_path)


def test_a_config_naming_a_foundation_fine_tunes_from_its_weights_and_tokenizer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    ours = _fake_foundation(tmp_path)
    cfg = load_experiment_config("irra_tiny", [*SMALL, "backbone.pretrained=foundation:tiny-clip",
                                               "data.tokenizer=foundation:tiny-clip"])
    assert cfg["backbone"]["pretrained"] == "foundation:tiny-clip"  # the config keeps the reference, not a path
    tok = build_tokenizer(cfg, None, None)
    assert tok.vocab_size == 49408  # the foundation's clip-bpe tokenizer, not a trained one
    method = build_model(cfg, tok, num_classes=4)
    loaded = method.state_dict()
    backbone = [k for k in ours if k.startswith("backbone.")]
    assert backbone and all(torch.equal(loaded[k], ours[k]) for k in backbone)


def test_an_unknown_foundation_is_one_line_at_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    _fake_foundation(tmp_path)
    code = main(["train", "--config", "irra_tiny", "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "backbone.pretrained=foundation:tiny-clipp", "--set", f"data.root={tmp_path / 'none'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "backbone.pretrained" in err and "'foundation:tiny-clipp'" in err and "shipped: foundation:tiny-clip" in err
    assert not (tmp_path / "run").exists()  # refused before anything was read or written
