"""`tbps pretrain` (issue 12): pretrain the clip layout on a tiny corpus, export it, fine-tune from it."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tbps.cli import main
from tbps.engine.build import build_model, build_tokenizer
from tbps.engine.experiment import load_experiment_config
from tbps.engine.foundation import WEIGHTS_FILE
from tbps.models.pretrained_keys import EXPORTED_MODULES
from tbps.engine.runs import load_run
from tbps.models.pretrained import load_pretrained
from tbps.synth import PRESETS, generate

TINY = ["backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, text_heads: 2, "
        "text_layers: 1, embed_dim: 32}", "data.image_size=[32, 16]", "data.max_text_len=24",
        "data.tokenizer_vocab_size=300", "data.cache_images=false", "train.device=cpu", "train.amp=null",
        "train.log_every=1", "eval.batch_size=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    corpus, bench = root / "corpus", root / "bench"
    generate(corpus, preset=replace(PRESETS["pretrain"], n_train=12), seed=0, height=64, width=32, workers=1,
             progress=False)
    generate(bench, preset="tiny", seed=0, height=64, width=32, workers=1, progress=False)
    return corpus, bench


def _pretrain_args(corpus: Path, bench: Path, out: Path, *extra: str, layout: str = "clip") -> list[str]:
    sets = [*TINY, *(["method.decoder_layers=1", "method.rerank_k=[4]"] if layout == "blip" else []), f"data.root={corpus}", f"data.eval_root={bench}", "train.epochs=1", "train.batch_size=8",
            "train.warmup_epochs=0", *extra]
    return ["pretrain", "--config", f"pretrain_tiny_{layout}", "--out", str(out), "--quiet",
            *[x for s in sets for x in ("--set", s)]]


# layout -> (fine-tuning config, a key of the exported layout, the fine-tuned method's modules the export fills)
FINE_TUNE = {"clip": ("irra_tiny", "visual.class_embedding"), "blip": ("cada_tiny", "visual_encoder.cls_token")}


@pytest.mark.parametrize("layout", sorted(FINE_TUNE))
def test_pretrain_exports_a_foundation_that_fine_tuning_loads_completely(layout: str, data, tmp_path: Path) -> None:
    corpus, bench = data
    run, export = tmp_path / "run", tmp_path / "foundation"
    assert main([*_pretrain_args(corpus, bench, run, layout=layout), "--export", str(export)]) == 0
    # zero-shot Rank-1 on the benchmark's validation split is logged during pretraining
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"]
    assert val and "t2i/R1" in val[-1] and 0.0 <= val[-1]["t2i/R1"] <= 100.0
    # and so is the effective rank of the embeddings, where a collapse shows (the first foundations': 3 of 128)
    assert all(1.0 <= val[-1][f"embedding/{side}_rank"] <= 128.0 for side in ("image", "text"))
    assert (run / "tb").is_dir()
    if layout == "blip":  # the objectives of BLIP are all trained and logged
        assert {"itc", "itm", "lm"} <= set(records[0]) and "t2i-rerank@4/R1" in val[-1]
    # the export holds the foreign layout's keys and the tokenizer
    config, key = FINE_TUNE[layout]
    state = torch.load(export / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    state = state["model"] if layout == "blip" else state  # BLIP's model_base.pth wraps its state dict
    assert key in state and (export / "tokenizer").is_dir()
    # fine-tuning reads it through backbone.pretrained: every weight of the filled modules arrives, unchanged
    extra = ["method.decoder_layers=1"] if layout == "blip" else []
    cfg = load_experiment_config(config, [*TINY, *extra, f"data.root={bench}",
                                          f"backbone.pretrained={export / WEIGHTS_FILE}",
                                          f"data.tokenizer={export / 'tokenizer'}"])
    method = build_model(cfg, build_tokenizer(cfg, None, None), num_classes=24)  # loads backbone.pretrained
    filled = [k for k in method.state_dict() if k.startswith(tuple(m + "." for m in EXPORTED_MODULES[layout]))]
    report = load_pretrained(method, export / WEIGHTS_FILE)
    assert report.loaded == len(filled) and not report.unused and not report.kept_random
    pretrained, ours = load_run(run, "last", device="cpu").method.state_dict(), method.state_dict()
    assert all(torch.equal(ours[k], pretrained[k]) for k in filled)
    fresh = build_model(cfg, build_tokenizer(cfg, None, None), num_classes=24, load_pretrained=False)
    assert not torch.equal(fresh.state_dict()[filled[0]], ours[filled[0]])  # not an initialisation


@pytest.mark.parametrize("layout", sorted(FINE_TUNE))
def test_pretraining_resumes_after_a_kill_exactly(layout: str, data, tmp_path: Path) -> None:
    corpus, bench = data
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(_pretrain_args(corpus, bench, whole, "train.ckpt_every_steps=1", layout=layout)) == 0
    assert main(_pretrain_args(corpus, bench, killed, "train.ckpt_every_steps=1", "train.stop_after_steps=2",
                               layout=layout)) == 0
    assert main(["pretrain", "--out", str(killed), "--resume", "--quiet"]) == 0
    a = load_run(whole, "last", device="cpu").method.state_dict()
    b = load_run(killed, "last", device="cpu").method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
