"""Association maps: patch-grid shape, one map per word and attribute phrase, overlays on disk."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tbps.cli import main
from tbps.config import save_config
from tbps.engine.experiment import load_experiment_config
from tbps.data.tokenizers import TrainedTokenizer
from tbps.engine.build import build_model, build_transforms, image_size_of
from tbps.engine.checkpoint import save_checkpoint
from tbps.explain import association_maps
from tbps.methods.maps import word_spans

CAPTIONS = [
    "A man wearing a blue and white striped tank top, green pants and pink shoes.",
    "A woman in a red dress with a black handbag and white sneakers.",
    "The lady has long black hair and wears a yellow jacket and grey jeans.",
]
TEXT = "A man wearing a blue and white striped tank top, green pants and pink shoes."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A cada run folder (config, tokenizer, random weights) written without training."""
    root = tmp_path_factory.mktemp("explain")
    cfg = load_experiment_config("cada_tiny_scratch", [
        "backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
        "text_layers: 2, embed_dim: 32}", "method.decoder_layers=1", "train.device=cpu"])
    tok = TrainedTokenizer.train(CAPTIONS * 3, vocab_size=300, extra_special=["[ENC]", "[DEC]"], min_frequency=1)
    tok.save(root / "tokenizer")
    torch.manual_seed(0)
    method = build_model(cfg, tok, num_classes=5)
    save_config(cfg, root / "config.yaml")
    save_checkpoint(root / "checkpoints" / "best", method, None, {"num_classes": 5, "epoch": 0})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), dtype=np.uint8))
    img.save(root / "person.png")
    return root, cfg, tok, method


def test_maps_have_the_patch_grid_shape_and_differ_between_words(run):
    root, cfg, tok, method = run
    method.eval()
    tf = build_transforms(cfg, image_size_of(method))[1]
    assoc = association_maps(method, Image.open(root / "person.png"), TEXT, tf, 64)
    grid = method.backbone.visual.grid
    assert assoc.grid == grid == (8, 4)
    words = assoc.by_kind("word")
    assert [w.label for w in words][:6] == ["A", "man", "wearing", "a", "blue", "and"]
    assert "t-shirt" not in [w.label for w in words]
    for m in assoc.maps:
        assert m.weights.shape == grid
        assert np.isclose(m.weights.sum(), 1.0, atol=1e-4) and (m.weights >= 0).all()
    blue, pants = next(w for w in words if w.label == "blue"), next(w for w in words if w.label == "pants")
    assert not np.allclose(blue.weights, pants.weights)
    phrases = [p.label for p in assoc.by_kind("phrase")]
    assert "blue and white striped tank top" in phrases and "pink shoes" in phrases
    assert len(assoc.by_kind("caption")) == 1 and 0.0 <= assoc.match_prob <= 1.0
    last = association_maps(method, Image.open(root / "person.png"), TEXT, tf, 64, layers="last")
    assert not np.allclose(last.maps[1].weights, assoc.maps[1].weights)


def test_word_pieces_merge_into_words():
    text = "A strawberry-red jumper"
    offsets = [(0, 0), (0, 1), (2, 7), (7, 12), (12, 13), (13, 16), (17, 20), (20, 23), (0, 0)]
    words = word_spans(text, offsets, 1, 8)
    assert [text[s:e] for s, e, _ in words] == ["A", "strawberry", "red", "jumper"]
    assert words[1][2] == [2, 3] and words[3][2] == [6, 7]


def test_explain_cli_writes_overlays_and_an_index(run, tmp_path, capsys):
    root, *_ = run
    out = tmp_path / "maps"
    assert main(["explain", str(root), "--image", str(root / "person.png"), "--text", TEXT, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["grid"] == [8, 4]
    index = json.loads((out / "index.json").read_text())
    kinds = {m["kind"] for m in index["maps"]}
    assert kinds == {"caption", "word", "phrase"}
    for m in index["maps"]:
        img = Image.open(out / m["file"])
        assert img.size == (128, 256) and img.mode == "RGB"  # 64x128 model input, scaled x2
    assert (out / "index.html").read_text().count("<img") == len(index["maps"]) + 1
    assert main(["explain", str(root), "--image", str(root / "missing.png"), "--text", TEXT, "--out", str(out)]) == 2
