"""The ablation runner (benchmarks/_ablation.py): cached runs are reused only under the same config."""
import argparse
import hashlib
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
                runs=str(tmp / "runs"), out=str(tmp / "results" / "abl"), quiet=True, scratch=False)
    return argparse.Namespace(**{**base, **kw})


def _fake_finished_run(tmp: Path, epochs: int, seed: int, r1: float, variant: str = "irra", config: str = "irra_tiny",
                       overrides: tuple[str, ...] = (), extra: dict | None = None) -> None:
    run = tmp / "runs" / variant / f"seed{seed}"
    cfg = load_experiment_config(config, [f"data.root={tmp / 'data'}", f"train.epochs={epochs}", *overrides,
                                          f"seed={seed}"])
    save_config(cfg, run / "config.yaml")
    metrics = {"t2i": {"R1": r1, "mAP": r1 + 2}, **({"extra": extra} if extra else {})}
    (run / "test.json").write_text(json.dumps({"metrics": metrics, "train_seconds": 60.0,
                                               "checkpoint": str(run / "checkpoints" / "best")}))


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


def _uca_extra(spearman: float, aurc: float, e_aurc: float) -> dict:
    return {"rank1_by_uncertainty_bin": {"spearman": spearman},
            "terse_vs_detailed": {"terse": {"mean_uncertainty": 2e-4}, "detailed": {"mean_uncertainty": 1e-4}},
            "risk_coverage": {"aurc": aurc, "oracle": aurc - e_aurc, "e_aurc": e_aurc},
            "files": ["/elsewhere/uca_risk_coverage.png"]}


def test_uca_table_reports_excess_aurc_relative_paths_and_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    import ablate_uca

    monkeypatch.setattr(_ablation, "ensure_data", lambda root: None)
    monkeypatch.setattr(_ablation, "REPO", tmp_path)  # the "repository" the results are written relative to
    overrides = ablate_uca.VARIANTS["uca_full_intra_means_only"][1]
    _fake_finished_run(tmp_path, 4, 0, 12.0, "uca_full_intra_means_only", "uca_tiny", tuple(overrides),
                       _uca_extra(-0.5, 0.90, 0.10))
    _fake_finished_run(tmp_path, 4, 1, 14.0, "uca_full_intra_means_only", "uca_tiny", tuple(overrides),
                       _uca_extra(-0.3, 0.86, 0.20))
    variants = {"uca_full_intra_means_only": ablate_uca.VARIANTS["uca_full_intra_means_only"]}
    _ablation.run_ablation("abl", variants, _args(tmp_path), tasks=["t2i"], extra=ablate_uca.uncertainty_columns)

    md = (tmp_path / "results" / "abl.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant"))
    assert "e-AURC" in header and "| AURC" not in header
    assert "0.15 ± 0.07" in md and "0.88" not in md  # excess AURC (0.10, 0.20), not raw AURC (0.90, 0.86)
    assert "-0.40 ± 0.14" in md  # Spearman
    assert "data.root=data" in md and str(tmp_path) not in md
    payload = json.loads((tmp_path / "results" / "abl.json").read_text())
    assert payload["common_overrides"][0] == "data.root=data"
    assert str(tmp_path) not in json.dumps(payload)  # every path under the repository is relative
    run = payload["runs"]["uca_full_intra_means_only"][0]
    assert run["init"] == "foundation:tiny-clip"  # uca_tiny fine-tunes from the shipped foundation
    assert run["checkpoint"] == "runs/uca_full_intra_means_only/seed0/checkpoints/best"
    assert run["metrics"]["t2i"]["R1"] == 12.0
    assert run["metrics"]["extra"]["rank1_by_uncertainty_bin"]["spearman"] == -0.5
    assert run["metrics"]["extra"]["files"] == ["/elsewhere/uca_risk_coverage.png"]  # outside: left as it is


def test_init_records_the_starting_checkpoint_relative_to_the_repository(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    monkeypatch.setattr(_ablation, "REPO", tmp_path)
    cfg = load_experiment_config("irra_tiny", [f"backbone.pretrained={tmp_path / 'foundation' / 'clip.safetensors'}"])
    assert _ablation.repo_relative({"init": _ablation.starting_checkpoint(cfg)}) == {
        "init": "foundation/clip.safetensors"}
    assert _ablation.starting_checkpoint(load_experiment_config("irra_tiny_scratch")) is None
    assert _ablation.starting_checkpoint(load_experiment_config("irra_tiny")) == "foundation:tiny-clip"
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    assert _ablation.checkpoint_sha256(str(weights)) == hashlib.sha256(b"weights").hexdigest()  # which version
    assert _ablation.checkpoint_sha256(None) is None
    assert _ablation.repo_relative(["x=1", "/abs/elsewhere", "pretrained/ViT-B-16.pt", 3]) == [
        "x=1", "/abs/elsewhere", "pretrained/ViT-B-16.pt", 3]


@pytest.mark.parametrize("variant", ["uca_full_intra_by_item", "uca_full_intra_means_only", "uca_full_var_length",
                                     "uca_omre"])
def test_new_uca_variants_load_strictly(variant: str) -> None:
    import ablate_uca

    config, overrides = ablate_uca.VARIANTS[variant]
    cfg = load_experiment_config(config, overrides)  # strict: an undeclared key would be refused
    assert cfg["method"]["name"] == "uca"
    if variant == "uca_omre":
        w = cfg["method"]["loss_weights"]
        assert (w["pcl_inter"], w["pcl_intra"], w["pcl_mean"], w["entropy"]) == (0, 0, 1.0, 0.1)
        assert cfg["method"]["num_samples"] == 3
    if variant == "uca_full_intra_means_only":
        assert cfg["method"]["pcl_intra_means_only"] is True


def test_report_only_rewrites_stored_results_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ablate_uca

    monkeypatch.setattr(_ablation, "run_one", lambda *a, **k: pytest.fail("--report-only must train nothing"))
    monkeypatch.setattr(_ablation, "ensure_data", lambda root: pytest.fail("--report-only needs no data"))
    other = "/elsewhere/checkout"  # the repository that ran them, as an old results file names it
    run = {"metrics": {"t2i": {"R1": 10.0, "mAP": 12.0}, "extra": _uca_extra(-0.6, 0.9, 0.25)},
           "train_seconds": 120.0, "checkpoint": f"{other}/benchmarks/runs/ablations-e4/uca_full/seed0/checkpoints/best"}
    stored = {"benchmark": "ablate_uca", "machine": {"cpu": "AMD EPYC", "torch": "2.13.0"}, "seeds": 1,
              "common_overrides": [f"data.root={other}/benchmarks/data/synth-small", "train.epochs=4"],
              "variants": {}, "runs": {"uca_full": [run]}, "note": ""}
    out = tmp_path / "results" / "ablate_uca"
    out.parent.mkdir()
    Path(f"{out}.json").write_text(json.dumps(stored))
    args = _args(tmp_path, seeds=1, out=str(out), report_only=True, scratch=True)  # these runs were from scratch
    _ablation.run_ablation("ablate_uca", ablate_uca.VARIANTS, args, tasks=["t2i"], extra=ablate_uca.uncertainty_columns)
    payload = json.loads(Path(f"{out}.json").read_text())
    assert payload["common_overrides"] == ["data.root=benchmarks/data/synth-small", "train.epochs=4"]
    r = payload["runs"]["uca_full"][0]
    assert r["checkpoint"] == "benchmarks/runs/ablations-e4/uca_full/seed0/checkpoints/best" and r["init"] is None
    assert r["metrics"]["t2i"]["R1"] == 10.0 and payload["machine"]["cpu"] == "AMD EPYC"  # the machine that ran them
    md = Path(f"{out}.md").read_text()
    assert "| uca_full | 1 | 10.00 | 12.00 | 0.25 | -0.60 |" in md and other not in md


def test_routes_budget_and_output_defaults() -> None:
    ft, scratch = _ablation.parse_args("ablate_x", argv=[]), _ablation.parse_args("ablate_x", argv=["--scratch"])
    assert ft.epochs == 0 and ft.runs.endswith("ablations-ft-ecfg") and ft.out.endswith("results/ablate_x")
    assert scratch.epochs == 4 and scratch.runs.endswith("ablations-e4") and scratch.out.endswith("ablate_x_scratch")
    assert _ablation.parse_args("ablate_x", argv=["--epochs", "2"]).runs.endswith("ablations-ft-e2")
    variants = {"irra": ("irra_tiny", []), "cada": ("cada_tiny", ["method.rerank_k=[4]"]), "paper": ("irra_cuhk", [])}
    assert _ablation.routed(variants, scratch=False) == variants
    assert _ablation.routed(variants, scratch=True) == {"irra": ("irra_tiny_scratch", []), "paper": ("irra_cuhk", []),
                                                        "cada": ("cada_tiny_scratch", ["method.rerank_k=[4]"])}


@pytest.mark.parametrize("module", ["ablate_cada", "ablate_uca"])
def test_both_grids_hold_the_irra_baseline_and_their_full_method(module: str) -> None:
    grid = __import__(module).VARIANTS
    assert grid["irra"] == ("irra_tiny", []) and grid[f"{module.split('_')[1]}_full"][1] == []


def _runs(**r1: list[float]) -> dict:
    return {v: [{"metrics": {"t2i": {"R1": x, "mAP": x}, "t2i-rerank@32": {"R1": x + 1, "mAP": x}}} for x in xs]
            for v, xs in r1.items()}


def test_cada_questions_answer_from_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ablate_cada

    answers = ablate_cada.paper_questions(_runs(irra=[10.0, 12.0], cada_full=[20.0, 22.0]))
    assert [a["answer"] for a in answers] == ["yes", "yes", "yes"]  # rerank = single + 1 here
    assert "cada_full t2i-rerank@32 22.00 ± 1.41 (n=2) vs cada_full t2i 21.00 ± 1.41 (n=2): +1.00" in answers[0]["evidence"]
    assert "not conclusive" in answers[0]["evidence"] and answers[1]["conclusive"]
    assert ablate_cada.paper_questions(_runs(irra=[10.0]))[0]["answer"] == "not measured"

    # the report carries them: <out>.json "answers" and a section of <out>.md
    monkeypatch.setattr(_ablation, "ensure_data", lambda root: None)
    _fake_finished_run(tmp_path, 4, 0, 10.0)
    payload = _ablation.run_ablation("abl", {"irra": ("irra_tiny", [])}, _args(tmp_path, seeds=1), tasks=["t2i"],
                                     questions=ablate_cada.paper_questions)
    assert payload["answers"][2]["answer"] == "not measured"  # no cada_full run
    md = (tmp_path / "results" / "abl.md").read_text()
    assert "## The papers' questions" in md and "Does CADA's single stage beat IRRA? **not measured**" in md
    assert "Starting checkpoints (`init`): `foundation:tiny-clip`" in md


def test_uca_questions_answer_from_the_runs() -> None:
    import ablate_uca

    runs = _runs(irra=[10.0, 11.0], uca_full=[9.0, 9.5])
    for r, rho, terse in zip(runs["uca_full"], (-0.5, 0.1), (3e-4, 2.5e-4)):
        r["metrics"]["extra"] = {"rank1_by_uncertainty_bin": {"spearman": rho},
                                 "terse_vs_detailed": {"terse": {"mean_uncertainty": terse},
                                                       "detailed": {"mean_uncertainty": 1e-4}}}
    beat, sign, terse = ablate_uca.paper_questions(runs)
    assert beat["answer"] == "no" and sign["answer"] == "yes" and terse["answer"] == "yes"
    assert "below 0 in 1 of 2 seeds" in sign["evidence"] and not sign["conclusive"]
    assert "+1.75e-04" in terse["evidence"]
