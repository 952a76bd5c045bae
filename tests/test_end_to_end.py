"""Generate the tiny benchmark, train a few steps, evaluate, and resume a stopped and a killed run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures import cli_train_args, render_tiny_benchmark
from tbps.cli import main

SMALL_MODEL = [
    "backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
    "text_layers: 1, embed_dim: 64}",
    "method.cross_layers=1",
    "train.epochs=2",
    "train.batch_size=16",
    "train.ckpt_every_steps=2",
    "train.log_every=2",
    "data.tokenizer_vocab_size=300",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return render_tiny_benchmark(tmp_path_factory.mktemp("synth") / "tiny")


def _train_args(data, out, *extra):
    return cli_train_args("irra_tiny_scratch", data, out, SMALL_MODEL + list(extra))


def _weights(run):
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _eval(run, tmp_path, name):
    out = tmp_path / f"{name}.json"
    assert main(["eval", str(run), "--split", "test", "--json", str(out), "--quiet"]) == 0
    return json.loads(out.read_text())


def test_train_eval_and_resume_reach_identical_results(tiny_data, tmp_path, capsys):
    full = tmp_path / "full"
    assert main(_train_args(tiny_data, full)) == 0
    for f in ("config.yaml", "log.jsonl", "tokenizer", "checkpoints/last/model.safetensors",
              "checkpoints/best/model.safetensors", "tb"):
        assert (full / f).exists(), f
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "val" for r in log) and any("pairs_per_s" in r for r in log)

    result = _eval(full, tmp_path, "full")
    m = result["metrics"]["t2i"]
    assert set(m) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert 0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100
    printed = capsys.readouterr().out
    assert "R1" in printed and "mINP" in printed

    # stop part-way through the first epoch (as a kill right after a checkpoint would), then resume
    part = tmp_path / "part"
    assert main(_train_args(tiny_data, part, "train.stop_after_steps=4")) == 0
    assert json.loads((part / "checkpoints/last/meta.json").read_text())["global_step"] == 4
    assert main(["train", "--out", str(part), "--resume", "--quiet"]) == 0
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _eval(part, tmp_path, "part")["metrics"] == result["metrics"]

    # starting again into a finished run folder without --resume is refused with a clear message
    assert main(_train_args(tiny_data, full)) == 2
    assert "--resume" in capsys.readouterr().err


def test_killed_process_resumes_to_the_same_weights(tiny_data, tmp_path):
    full = tmp_path / "full"
    assert main(_train_args(tiny_data, full)) == 0
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tbps", *_train_args(tiny_data, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    meta = killed / "checkpoints" / "last" / "meta.json"
    while time.time() < deadline and proc.poll() is None:
        if meta.exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["train", "--out", str(killed), "--resume", "--quiet"]) == 0
    a, b = _weights(full), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_errors_name_the_path(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
