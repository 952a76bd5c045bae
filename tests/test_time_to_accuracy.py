"""benchmarks/time_to_accuracy.py on two fake finished runs: curves, the steps-to-target table, the figure."""
import json
import sys
from pathlib import Path

import pytest

from tbps.config import save_config
from tbps.engine.experiment import load_experiment_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _ablation  # noqa: E402
import time_to_accuracy  # noqa: E402


def _fake_run(run: Path, config: str, data: Path, val_r1: list[float], seconds_per_epoch: float,
              steps_per_epoch: int = 10, resumed: bool = False) -> None:
    """A run folder as `tbps train` leaves it: config.yaml and a log.jsonl with train and val records."""
    save_config(load_experiment_config(config, [f"data.root={data}", "seed=3", "train.batch_size=8"]),
                run / "config.yaml")
    t0, records = 1000.0, []
    for e, r1 in enumerate(val_r1, 1):
        for step in (steps_per_epoch * (e - 1) + 5, steps_per_epoch * e):
            # 8 pairs per step at 8 / (seconds per step) pairs/s: the first record sits 5 steps after the start
            records.append({"step": step, "epoch": step / steps_per_epoch, "lr": 1e-3, "loss": 1.0,
                            "pairs_per_s": 8 * steps_per_epoch / seconds_per_epoch,
                            "time": t0 + step * seconds_per_epoch / steps_per_epoch})
        records.append({"step": steps_per_epoch * e, "epoch": e, "split": "val", "t2i/R1": r1, "t2i/mAP": r1,
                        "time": t0 + e * seconds_per_epoch})
        if resumed and e == 1:
            records.append({**records[-3], "time": records[-1]["time"] + 1})  # a step logged again after a resume
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curves_table_and_figure_from_given_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ablation, "REPO", tmp_path)  # results name paths relative to this "repository"
    data, ft, scratch = tmp_path / "data", tmp_path / "runs" / "ft", tmp_path / "runs" / "scratch"
    _fake_run(ft, "irra_tiny", data, [20.0, 30.0, 32.0], seconds_per_epoch=100.0)
    _fake_run(scratch, "irra_tiny_scratch", data, [5.0, 10.0, 18.0, 24.0, 27.0, 30.0], seconds_per_epoch=50.0,
              resumed=True)
    out = tmp_path / "results" / "tta"
    payload = time_to_accuracy.main(["--runs", str(ft), str(scratch), "--out", str(out)])

    stored = json.loads(Path(f"{out}.json").read_text())
    assert stored == json.loads(json.dumps(payload))
    ft_curve, sc_curve = stored["curves"]["fine_tuned"], stored["curves"]["scratch"]
    assert [p["val_R1"] for p in ft_curve["points"]] == [20.0, 30.0, 32.0]
    assert [p["step"] for p in sc_curve["points"]] == [10, 20, 30, 40, 50, 60]
    assert [p["seconds"] for p in ft_curve["points"]] == [100.0, 200.0, 300.0]  # from the run's start, not its first log
    assert ft_curve["init"] == "foundation:tiny-clip" and sc_curve["init"] is None
    assert sc_curve["resumed"] and not ft_curve["resumed"]
    assert ft_curve["run"] == "runs/ft" and stored["data_root"] == "data" and str(tmp_path) not in json.dumps(stored)
    # scratch's best is 30: 50% (15) at step 30 vs 10, 90% (27) at step 50 vs 20, 100% at 60 vs 20
    by_frac = {r["fraction_of_scratch_best"]: r for r in stored["summary"]}
    assert (by_frac[0.5]["fine_tuned_step"], by_frac[0.5]["scratch_step"], by_frac[0.5]["step_ratio"]) == (10, 30, 3.0)
    assert (by_frac[0.9]["scratch_step"], by_frac[0.9]["fine_tuned_step"]) == (50, 20)
    assert by_frac[1.0]["step_ratio"] == 3.0 and by_frac[1.0]["seconds_ratio"] == pytest.approx(1.5)

    md = Path(f"{out}.md").read_text()
    assert "| 15.00 (50% of scratch best) | 10 | 100 | 30 | 150 | 3.0 | 1.5 |" in md
    assert "| scratch | 60 | 6 | 300 | 30.00 |" in md
    png = Path(f"{out}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_a_target_never_reached_and_a_bad_log(tmp_path: Path) -> None:
    assert time_to_accuracy.first_reaching([{"val_R1": 3.0}], 5.0) is None
    run = tmp_path / "run"
    _fake_run(run, "irra_tiny_scratch", tmp_path / "data", [5.0], 10.0)
    (run / "log.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(SystemExit, match=r"log\.jsonl: line 2 is not JSON"):
        time_to_accuracy.read_curve(run)
    with pytest.raises(SystemExit, match="no log.jsonl"):
        time_to_accuracy.read_curve(tmp_path)
