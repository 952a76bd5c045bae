"""The ablation runner (benchmarks/_ablation.py): cached runs are reused only under the same config."""
import argparse
import json
import sys
from pathlib import Path

import pytest

from tbps.config import save_config
from tbps.engine.experiment import load_experiment_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _ablation  # noqa: E402


def _args(tmp: Path, **kw) -> argparse.Namespace:
    base = dict(seeds=2, variants=None, train_seeds=None, data_root=str(tmp / "data"), epochs=4, set=[],
                runs=str(tmp / "runs"), out=str(tmp / "results" / "abl"), quiet=True)
    return argparse.Namespace(**{**base, **kw})


def _fake_finished_run(tmp: Path, epochs: int, seed: int, r1: float) -> None:
    run = tmp / "runs" / "irra" / f"seed{seed}"
    cfg = load_experiment_config("irra_tiny", [f"data.root={tmp / 'data'}", f"train.epochs={epochs}", f"seed={seed}"])
    save_config(cfg, run / "config.yaml")
    (run / "test.json").write_text(json.dumps({"metrics": {"t2i": {"R1": r1, "mAP": r1 + 2}}, "train_seconds": 60.0}))


def test_table_from_cached_runs_and_config_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ablation, "ensure_data", lambda root: None)
    _fake_finished_run(tmp_path, epochs=4, seed=0, r1=10.0)
    _fake_finished_run(tmp_path, epochs=4, seed=1, r1=14.0)
    variants = {"irra": ("irra_tiny", [])}

    # Both seeds cached under the same config: nothing trains, the table has mean ± std over 2 seeds.
    _ablation.run_ablation("abl", variants, _args(tmp_path), tasks=["t2i"])
    md = (tmp_path / "results" / "abl.md").read_text()
    assert "| irra | 2 | 12.00 ± 2.83 | 14.00 ± 2.83 |" in md
    assert json.loads((tmp_path / "results" / "abl.json").read_text())["runs"]["irra"][1]["metrics"]["t2i"]["R1"] == 14.0

    # Training only seed 0 (cached) still reports the finished seed 1; an unfinished seed 2 is left out.
    _ablation.run_ablation("abl", variants, _args(tmp_path, seeds=3, train_seeds=[0]), tasks=["t2i"])
    assert "| irra | 2 |" in (tmp_path / "results" / "abl.md").read_text()

    # The same runs folder asked for another schedule: refused, naming the key, not silently reused.
    with pytest.raises(SystemExit, match=r"train\.epochs: 4 -> 6"):
        _ablation.run_ablation("abl", variants, _args(tmp_path, epochs=6), tasks=["t2i"])
