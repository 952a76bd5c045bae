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
from tbps.engine.foundation import WEIGHTS_FILE, openai_clip_state
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


def _pretrain_args(corpus: Path, bench: Path, out: Path, *extra: str) -> list[str]:
    sets = [*TINY, f"data.root={corpus}", f"data.eval_root={bench}", "train.epochs=1", "train.batch_size=8",
            "train.warmup_epochs=0", *extra]
    return ["pretrain", "--config", "pretrain_tiny_clip", "--out", str(out), "--quiet",
            *[x for s in sets for x in ("--set", s)]]


def test_pretrain_exports_a_foundation_that_fine_tuning_loads_completely(data, tmp_path: Path) -> None:
    corpus, bench = data
    run, export = tmp_path / "run", tmp_path / "foundation"
    assert main([*_pretrain_args(corpus, bench, run), "--export", str(export)]) == 0
    # zero-shot Rank-1 on the benchmark's validation split is logged during pretraining
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"]
    assert val and "t2i/R1" in val[-1] and 0.0 <= val[-1]["t2i/R1"] <= 100.0
    assert (run / "tb").is_dir()
    # the export holds OpenAI CLIP's keys and the tokenizer
    state = torch.load(export / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    assert "visual.class_embedding" in state and "text_projection" in state
    assert (export / "tokenizer").is_dir()
    # fine-tuning reads it through backbone.pretrained: every backbone weight arrives, unchanged
    cfg = load_experiment_config("irra_tiny", [*TINY, f"data.root={bench}", f"backbone.pretrained={export / WEIGHTS_FILE}",
                                              f"data.tokenizer={export / 'tokenizer'}"])
    tok = build_tokenizer(cfg, None, None)
    method = build_model(cfg, tok, num_classes=24, load_pretrained=False)
    report = load_pretrained(method, export / WEIGHTS_FILE)
    backbone_keys = [k for k in method.state_dict() if k.startswith("backbone.")]
    assert report.loaded == len(backbone_keys) and not report.unused and not report.kept_random
    pretrained = load_run(run, "last", device="cpu").method.state_dict()
    ours = method.state_dict()
    assert all(torch.equal(ours[k], pretrained[k]) for k in backbone_keys)
    # and the loaded weights are the ones exported (not a fresh initialisation)
    assert torch.equal(openai_clip_state(method)["visual.proj"], state["visual.proj"])


def test_pretraining_resumes_after_a_kill_exactly(data, tmp_path: Path) -> None:
    corpus, bench = data
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(_pretrain_args(corpus, bench, whole, "train.ckpt_every_steps=1")) == 0
    assert main(_pretrain_args(corpus, bench, killed, "train.ckpt_every_steps=1", "train.stop_after_steps=2")) == 0
    assert main(["pretrain", "--out", str(killed), "--resume", "--quiet"]) == 0
    a = load_run(whole, "last", device="cpu").method.state_dict()
    b = load_run(killed, "last", device="cpu").method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
