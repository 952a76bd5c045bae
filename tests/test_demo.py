"""`make demo`'s driver on the tiny preset: it runs end to end, reuses a current render, redoes a stale one."""
import json
from pathlib import Path

import pytest

from tbps.demo import run_demo


def test_demo_runs_reuses_and_replaces_stale_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    first = run_demo(out, preset="tiny", epochs=1, progress=False, num_page_queries=2)
    m = first["metrics"]["t2i"]
    assert set(m) >= {"R1", "R5", "R10", "mAP", "mINP"} and 0.0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100.0
    assert (out / "page" / "index.html").is_file()
    assert json.loads((out / "demo_result.json").read_text())["metrics"] == first["metrics"]
    printed = capsys.readouterr().out
    assert "rendering the 'tiny' benchmark" in printed and "(resuming)" not in printed

    again = run_demo(out, preset="tiny", epochs=1, progress=False, num_page_queries=2)
    printed = capsys.readouterr().out
    assert "benchmark already at" in printed and "(resuming)" in printed
    assert again["metrics"] == first["metrics"]  # the finished run is reused, not retrained

    # A render from another preset or synth version (e.g. before a recalibration) is never reused,
    # and neither is the run trained on it.
    meta_file = out / "data" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["preset_config"]["difficulty"]["terse_frac"] = 0.99
    meta_file.write_text(json.dumps(meta))
    run_demo(out, preset="tiny", epochs=1, progress=False, num_page_queries=2)
    printed = capsys.readouterr().out
    assert "holds another render" in printed and "rendering the 'tiny' benchmark" in printed
    assert "(resuming)" not in printed
    assert json.loads(meta_file.read_text())["preset_config"]["difficulty"]["terse_frac"] != 0.99
