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


def test_foundation_list_prints_the_shipped_ones(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    assert main(["foundation", "list"]) == 0
    assert "no foundation shipped" in capsys.readouterr().out
    _fake_foundation(tmp_path)
    assert main(["foundation", "list"]) == 0
    assert capsys.readouterr().out.startswith("foundation:tiny-clip\t")


def test_an_unknown_foundation_is_one_line_at_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    _fake_foundation(tmp_path)
    code = main(["train", "--config", "irra_tiny", "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "backbone.pretrained=foundation:tiny-clipp", "--set", f"data.root={tmp_path / 'none'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "backbone.pretrained" in err and "'foundation:tiny-clipp'" in err and "shipped: foundation:tiny-clip" in err
    assert not (tmp_path / "run").exists()  # refused before anything was read or written


# ---------------------------------------------------------------------------- tbps foundation ship

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny clip-layout pretraining run, its export and the benchmark it validates on (as tests/test_pretrain.py)."""
    from dataclasses import replace

    from tbps.synth import PRESETS, generate

    root = tmp_path_factory.mktemp("ship")
    corpus, bench, run, export = root / "corpus", root / "bench", root / "run", root / "export"
    generate(corpus, preset=replace(PRESETS["pretrain"], n_train=12), seed=0, height=64, width=32, workers=1,
             progress=False)
    generate(bench, preset="tiny", seed=0, height=64, width=32, workers=1, progress=False)
    sets = [*SMALL, "data.tokenizer_vocab_size=300", "train.log_every=1", "eval.batch_size=16", f"data.root={corpus}",
            f"data.eval_root={bench}", "train.epochs=2", "train.batch_size=8", "train.warmup_epochs=0"]
    assert main(["pretrain", "--config", "pretrain_tiny_clip", "--out", str(run), "--quiet", "--export", str(export),
                 *[x for s in sets for x in ("--set", s)]]) == 0
    return {"corpus": corpus, "bench": bench, "run": run, "export": export}


def _ship(pretrained: dict[str, Path], into: Path, *extra: str) -> int:
    return main(["foundation", "ship", str(pretrained["export"]), "--name", "tiny-clip", "--run", str(pretrained["run"]),
                 "--into", str(into), "--quiet", "--set", "eval.batch_size=16", *extra])


def _strings(x) -> list[str]:
    if isinstance(x, dict):
        return [s for v in x.values() for s in _strings(v)] + [k for k in x if isinstance(k, str)]
    if isinstance(x, list):
        return [s for v in x for s in _strings(v)]
    return [x] if isinstance(x, str) else []


def test_ship_writes_half_precision_weights_the_tokenizer_and_a_card_with_the_run_facts(pretrained, tmp_path: Path,
                                                                                        monkeypatch) -> None:
    import json

    from safetensors import safe_open

    from tbps.models.pretrained import load_pretrained
    from tbps.utils import read_jsonl, sha256_file

    assert _ship(pretrained, tmp_path) == 0
    folder = tmp_path / "tiny-clip"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "card.json", "model.safetensors", "tokenizer"]
    card = json.loads((folder / "card.json").read_text())
    # precision: float16 exactly when the re-measured zero-shot Rank-1 of the float16 file equals the export's
    check = card["ship_check"]
    same = {t: m["R1"] for t, m in check["float32_export"].items()} == {t: m["R1"] for t, m in check["float16"].items()}
    assert check["float16_changes_rank1"] is (not same) and check["split"] == "val" and check["config"] == "irra_tiny"
    assert card["dtype"] == ("float16" if same else "float32")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()}
    assert dtypes == {torch.float16 if same else torch.float32}
    # the run's facts: seed, steps, epochs, zero-shot Rank-1 per epoch from its log, the command it was made with
    log = read_jsonl(pretrained["run"] / "log.jsonl")
    val = [r for r in log if r.get("split") == "val"]
    pt = card["pretraining"]
    exported = json.loads((Path(json.loads((pretrained["export"] / "foundation.json").read_text())["checkpoint"])
                           / "meta.json").read_text())  # the checkpoint the export holds (best on validation)
    assert pt["seed"] == 0 and pt["epochs"] == 2 and pt["finished"]
    assert (pt["steps"], pt["epochs_done"]) == (exported["global_step"], exported["epoch"]) and pt["steps"] > 0
    assert [r["t2i/R1"] for r in pt["zero_shot_val"]] == [r["t2i/R1"] for r in val] and len(val) == 2
    assert pt["wall_seconds"] > 0 and pt["command_source"] == "recorded by tbps pretrain"
    assert pt["commands"][0].startswith("tbps pretrain --config pretrain_tiny_clip --out .../run")
    assert card["machine"]["cpu"] and card["machine"]["torch"] == torch.__version__
    assert card["corpus"]["preset"] == "pretrain" and card["corpus"]["num_images"] == 36
    # sizes and hashes of every file, paths relative to the repository (these tmp folders are outside it)
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    recorded = card["files"]
    assert set(recorded) == set(files) - {"card.json", "README.md"} and "tokenizer/tokenizer.json" in recorded
    assert all(recorded[k]["sha256"] == sha256_file(files[k]) and recorded[k]["bytes"] == files[k].stat().st_size
               for k in recorded)
    assert not [s for s in _strings(card) if s.startswith(("/", str(tmp_path)))]
    readme = (folder / "README.md").read_text()
    assert recorded["model.safetensors"]["sha256"] in readme and pt["commands"][0] in readme
    assert f"{val[-1]['t2i/R1']:.2f}" in readme
    # the shipped file loads completely into the fine-tuning model, as foundation:tiny-clip
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    cfg = load_experiment_config("irra_tiny", [*SMALL, "backbone.pretrained=foundation:tiny-clip",
                                               "data.tokenizer=foundation:tiny-clip"])
    method = build_model(cfg, build_tokenizer(cfg, None, None), num_classes=4)
    report = load_pretrained(method, folder / "model.safetensors")
    assert report.loaded == len([k for k in method.state_dict() if k.startswith("backbone.")]) and not report.kept_random


def test_ship_can_be_forced_to_either_precision_and_rebuilds_the_command_of_an_unrecorded_run(pretrained,
                                                                                               tmp_path: Path) -> None:
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(pretrained["run"], run)
    (run / "commands.jsonl").unlink()  # a run made before tbps pretrain recorded its command
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        assert _ship({**pretrained, "run": run}, tmp_path / precision, "--precision", precision) == 0
        card = json.loads((tmp_path / precision / "tiny-clip" / "card.json").read_text())
        state = __import__("safetensors.torch", fromlist=["load_file"]).load_file(
            str(tmp_path / precision / "tiny-clip" / "model.safetensors"))
        assert card["dtype"] == str(dtype).removeprefix("torch.") and state["visual.class_embedding"].dtype == dtype
    pt = card["pretraining"]
    assert pt["command_source"].startswith("rebuilt from .../config.yaml")
    cmd = pt["commands"][0]
    assert cmd.startswith("tbps pretrain --config pretrain_tiny_clip") and "--set train.epochs=2" in cmd
    assert "--set data.root=.../corpus" in cmd and "--set train.lr" not in cmd  # only what differs


def test_a_refused_ship_leaves_the_shipped_foundation_as_it_was(pretrained, tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    import tbps.foundation.ship as ship

    assert _ship(pretrained, tmp_path) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "tiny-clip").rglob("*") if p.is_file()}
    monkeypatch.setattr(ship, "MAX_FILE_BYTES", 100_000)  # the clip tokenizer and the weights are larger
    capsys.readouterr()
    assert _ship(pretrained, tmp_path) == 2
    err = capsys.readouterr().err
    assert "refusing to ship tiny-clip" in err and "model.safetensors" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (tmp_path / "tiny-clip").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-clip"]  # no temporary folder left behind
    assert main(["foundation", "ship", str(tmp_path / "nothing"), "--name", "x", "--run", str(pretrained["run"]),
                 "--into", str(tmp_path)]) == 2
    assert "is not a foundation export" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the shipped foundations

# the tiny fine-tuning configs each shipped foundation serves, at their own widths
SERVES = {"tiny-clip": ("irra_tiny", "uca_tiny"), "tiny-blip": ("cada_tiny",)}


def check_shipped_foundation(name: str, overrides: list[str] = ()) -> None:
    """`foundation/<name>/` holds what its card lists, byte for byte, and fills every tensor of the
    modules it provides in each tiny config that starts from it."""
    import json

    from tbps.engine.foundation import TOKENIZER_DIR
    from tbps.foundation.ship import MAX_FILE_BYTES
    from tbps.models.pretrained import load_pretrained
    from tbps.models.pretrained_keys import EXPORTED_MODULES
    from tbps.utils import sha256_file

    assert name in foundation.shipped(), f"foundation {name} is not in {foundation.foundation_root()}"
    folder = foundation.foundation_root() / name
    card = json.loads((folder / foundation.CARD_JSON).read_text())
    assert card["name"] == name and (folder / foundation.CARD_README).is_file() and (folder / TOKENIZER_DIR).is_dir()
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    assert set(card["files"]) == set(files) - {foundation.CARD_JSON, foundation.CARD_README}
    for rel, p in files.items():
        assert p.stat().st_size <= MAX_FILE_BYTES, f"{rel}: {p.stat().st_size} bytes"
        if rel in card["files"]:
            assert sha256_file(p) == card["files"][rel]["sha256"], f"{name}/{rel} differs from its card's SHA-256"
    for config in SERVES[name]:
        cfg = load_experiment_config(config, [f"backbone.pretrained=foundation:{name}",
                                              f"data.tokenizer=foundation:{name}", *overrides])
        method = build_model(cfg, build_tokenizer(cfg, None, None), num_classes=4)  # loads it, refusing any gap
        family = method.backbone.cfg.family
        filled = [k for k in method.state_dict() if k.startswith(tuple(m + "." for m in EXPORTED_MODULES[family]))]
        report = load_pretrained(method, folder / foundation.MODEL_FILE)
        assert report.loaded == len(filled) and not report.kept_random and not report.unused, (config, report.summary())


@pytest.mark.parametrize("name", foundation.EXPECTED)
def test_the_shipped_foundations_load_into_the_tiny_configs_and_match_their_cards(name: str) -> None:
    check_shipped_foundation(name)


def test_the_shipped_foundation_check_passes_a_shipped_folder_and_catches_a_changed_byte(pretrained, tmp_path: Path,
                                                                                       monkeypatch) -> None:
    assert _ship(pretrained, tmp_path) == 0
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    widths = SMALL[:3]  # the test export's widths instead of the tiny configs'
    check_shipped_foundation("tiny-clip", widths)
    tok = tmp_path / "tiny-clip" / "tokenizer" / "tbps_tokenizer.json"
    tok.write_text(tok.read_text() + " ")
    with pytest.raises(AssertionError, match="SHA-256"):
        check_shipped_foundation("tiny-clip", widths)
    with pytest.raises(AssertionError, match="not in"):
        check_shipped_foundation("tiny-blip", widths)


def test_ship_measures_a_blip_layout_export_through_the_cada_model(pretrained, tmp_path: Path, monkeypatch) -> None:
    import json

    run, export = tmp_path / "run", tmp_path / "export"
    blip = ["method.decoder_layers=1", "method.rerank_k=[4]"]
    sets = [*SMALL, *blip, "data.tokenizer_vocab_size=300", "eval.batch_size=16", f"data.root={pretrained['corpus']}",
            f"data.eval_root={pretrained['bench']}", "train.epochs=1", "train.batch_size=8", "train.warmup_epochs=0"]
    assert main(["pretrain", "--config", "pretrain_tiny_blip", "--out", str(run), "--quiet", "--export", str(export),
                 *[x for s in sets for x in ("--set", s)]]) == 0
    assert main(["foundation", "ship", str(export), "--name", "tiny-blip", "--run", str(run), "--into", str(tmp_path),
                 "--quiet", *[x for s in [*blip, "eval.batch_size=16"] for x in ("--set", s)]]) == 0
    card = json.loads((tmp_path / "tiny-blip" / "card.json").read_text())
    check = card["ship_check"]
    assert card["layout"] == "blip" and check["config"] == "cada_tiny"
    assert {"t2i", "t2i-rerank@4"} <= set(check["float16"]) == set(check["float32_export"])  # both stages measured
    assert card["pretraining"]["zero_shot_val"][0]["t2i-rerank@4/R1"] >= 0
    monkeypatch.setattr(foundation, "foundation_root", lambda: tmp_path)
    check_shipped_foundation("tiny-blip", [*SMALL[:3], "method.decoder_layers=1"])  # the test export's widths


def test_make_foundation_renders_pretrains_with_resume_and_ships_both_and_make_test_does_not() -> None:
    import shutil
    import subprocess

    from tbps.foundation.ship import repo_root

    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    root = repo_root()

    def dry(target: str) -> str:
        out = subprocess.run(["make", "-n", target, "VENV=.venv"], cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    plan = dry("foundation")
    assert "synth --preset pretrain --seed 0 --out data/synth-pretrain" in plan
    assert "synth --preset small --seed 0 --out data/synth-small" in plan and "is_current" in plan
    assert "for layout in clip blip" in plan and "--config pretrain_tiny_$layout" in plan
    assert "--resume" in plan and "checkpoints/last" in plan  # a killed run is resumed, not restarted
    assert "foundation ship $run-export --name tiny-$layout --run $run --eval-root data/synth-small" in plan
    assert "pretrain" not in dry("test") and "foundation" not in dry("test")


def test_the_shipped_files_are_package_data() -> None:
    import tomllib
    from pathlib import PurePosixPath

    from tbps.foundation.ship import repo_root

    patterns = tomllib.loads((repo_root() / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tbps"]
    shipped = ["model.safetensors", "card.json", "README.md", "tokenizer/tokenizer.json", "tokenizer/tbps_tokenizer.json"]
    for rel in shipped:
        path = PurePosixPath("foundation", "tiny-clip", rel)
        assert any(path.match(p) and len(path.parts) == len(PurePosixPath(p).parts) for p in patterns), path
