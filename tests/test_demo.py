"""`make demo`'s driver on the tiny preset: it fine-tunes from a foundation, prints the zero-shot,
fine-tuned and stored from-scratch rows, reuses a current render and redoes a stale one."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tbps.cli import main
from tbps.demo import SCRATCH_LABEL, read_scratch_result, zero_shot_metrics
from tbps.engine.experiment import load_experiment_config
from tbps.engine.foundation import WEIGHTS_FILE
from tbps.synth import PRESETS, generate
from test_pretrain import TINY, _pretrain_args


@pytest.fixture(scope="module")
def foundation(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A tiny clip-layout export (1 pretraining epoch on 12 corpus images) and the overrides that
    point the demo's config at it: the shipped 128-wide foundation is tested in test_tiny_configs.py."""
    root = tmp_path_factory.mktemp("foundation")
    corpus, bench, export = root / "corpus", root / "bench", root / "export"
    generate(corpus, preset=replace(PRESETS["pretrain"], n_train=12), seed=0, height=64, width=32, workers=1,
             progress=False)
    generate(bench, preset="tiny", seed=0, height=64, width=32, workers=1, progress=False)
    assert main([*_pretrain_args(corpus, bench, root / "run"), "--export", str(export)]) == 0
    return [*TINY, "method.cross_layers=1", f"backbone.pretrained={export / WEIGHTS_FILE}",
            f"data.tokenizer={export / 'tokenizer'}"]


def test_demo_rows_reuse_and_stale_data(foundation: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out, scratch_file = tmp_path / "demo", tmp_path / "demo_scratch.json"
    kw = dict(preset="tiny", epochs=1, progress=False, num_page_queries=2, overrides=foundation,
              scratch_result=scratch_file)
    first = run_demo_checked(out, **kw)
    printed = capsys.readouterr().out
    assert "rendering the 'tiny' benchmark" in printed and "(resuming)" not in printed
    assert "zero-shot foundation (foundation.pt)" in printed and "fine-tuned (irra_tiny)" in printed
    assert "from scratch (irra_tiny_scratch)" in printed and "not recorded" in printed
    assert "style-shift captions" in printed and "attribute oracle" in printed
    assert first["rows"]["scratch"] is None
    assert 0.0 < first["attribute_oracle_R1"] <= 100.0 and 0.0 <= first["style_shift"]["t2i"]["R1"] <= 100.0

    # The stored from-scratch result of this preset and seed becomes the third row, labelled as not re-run.
    scratch_file.write_text(json.dumps({"config": "irra_tiny_scratch", "preset": "tiny", "seed": 0, "split": "test",
                                        "metrics": {"t2i": {"R1": 12.34, "mAP": 15.67}}, "source": "README"}))
    again = run_demo_checked(out, **kw)
    printed = capsys.readouterr().out
    assert "benchmark already at" in printed and "(resuming)" in printed
    assert again["metrics"] == first["metrics"]  # the finished run is reused, not retrained
    assert again["rows"]["zero_shot"] == first["rows"]["zero_shot"]  # the foundation, not the fine-tuned run
    row = next(line for line in printed.splitlines() if line.startswith("from scratch"))
    assert "12.34" in row and "15.67" in row and SCRATCH_LABEL in row
    assert again["rows"]["scratch"]["t2i"]["R1"] == 12.34

    # A render from another preset or synth version (e.g. before a recalibration) is never reused,
    # and neither is the run trained on it.
    meta_file = out / "data" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["preset_config"]["difficulty"]["terse_frac"] = 0.99
    meta_file.write_text(json.dumps(meta))
    run_demo_checked(out, **kw)
    printed = capsys.readouterr().out
    assert "holds another render" in printed and "rendering the 'tiny' benchmark" in printed
    assert "(resuming)" not in printed
    assert json.loads(meta_file.read_text())["preset_config"]["difficulty"]["terse_frac"] != 0.99


def run_demo_checked(out: Path, **kw) -> dict:
    """run_demo, and its demo_result.json holds every row it returned."""
    from tbps.demo import run_demo

    result = run_demo(out, **kw)
    m = result["metrics"]["t2i"]
    assert set(m) >= {"R1", "R5", "R10", "mAP", "mINP"} and 0.0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100.0
    assert result["rows"]["fine_tuned"] == result["metrics"]
    assert (out / "page" / "index.html").is_file()
    stored = json.loads((out / "demo_result.json").read_text())
    assert stored["rows"] == json.loads(json.dumps(result["rows"])) and stored["metrics"] == result["metrics"]
    return result


def test_zero_shot_reads_the_foundation(foundation: list[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(data, preset="tiny", seed=0, height=64, width=32, workers=1, progress=False)
    base = [f"data.root={data}", *foundation]
    with_foundation = zero_shot_metrics(load_experiment_config("irra_tiny", base))
    random = zero_shot_metrics(load_experiment_config("irra_tiny", [*base, "backbone.pretrained=null"]))
    assert with_foundation == zero_shot_metrics(load_experiment_config("irra_tiny", base))  # deterministic
    assert with_foundation["t2i"]["mAP"] != random["t2i"]["mAP"]  # the pretrained weights are what is scored


def test_scratch_result_reader(tmp_path: Path) -> None:
    path = tmp_path / "demo_scratch.json"
    assert read_scratch_result(path, "small", 0) is None  # not recorded
    path.write_text(json.dumps({"preset": "small", "seed": 0, "metrics": {"t2i": {"R1": 30.0, "mAP": 28.0}}}))
    assert read_scratch_result(path, "small", 0)["metrics"]["t2i"]["R1"] == 30.0
    assert read_scratch_result(path, "tiny", 0) is None and read_scratch_result(path, "small", 1) is None
    path.write_text(json.dumps({"preset": "small", "seed": 0, "metrics": {"t2i": {"R1": "high"}}}))
    with pytest.raises(ValueError, match=r"demo_scratch\.json: field metrics\.t2i must hold numbers R1 and mAP"):
        read_scratch_result(path, "small", 0)
    path.write_text(json.dumps({"seed": 0, "metrics": {}}))
    with pytest.raises(ValueError, match=r"demo_scratch\.json: missing field 'preset'"):
        read_scratch_result(path, "small", 0)
    path.write_text("{")
    with pytest.raises(ValueError, match=r"demo_scratch\.json: not valid JSON"):
        read_scratch_result(path, "small", 0)
