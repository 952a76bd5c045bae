"""Strict experiment configs: every key of every file and override is known, defaults have one source."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from tbps.cli import main
from tbps.config import ConfigError, ConfigKeyError, flatten_keys, get, load_config
from tbps.engine.experiment import BASE_CONFIG, CONFIG_DIR, experiment_schema, load_experiment_config
from tbps.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_configs_folder_is_the_package_data() -> None:
    """`configs/` at the top is the same folder as the shipped `src/tbps/configs/` (one copy)."""
    assert (ROOT / "configs").resolve() == CONFIG_DIR == (ROOT / "src" / "tbps" / "configs").resolve()
    assert '"configs/*.yaml"' in (ROOT / "pyproject.toml").read_text()
    assert len(SHIPPED) >= 17


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_strictly(path: Path) -> None:
    cfg = load_experiment_config(path)
    assert cfg["method"]["name"] in METHODS
    # defaults filled in: every known key is present, so a saved run config is complete
    assert set(flatten_keys(experiment_schema(cfg).defaults)) <= set(flatten_keys(cfg))


def test_unknown_keys_in_files_name_file_key_and_closest(tmp_path: Path) -> None:
    cases = {
        "method:\n  learnable_taux: true\n": ("method.learnable_taux", "method.learnable_tau"),
        "method:\n  loss_weights: {sdm: 1.0, mml: 1.0}\n": ("method.loss_weights.mml", "method.loss_weights.mlm"),
        "train:\n  warmup_epoch: 2\n": ("train.warmup_epoch", "train.warmup_epochs"),
        "data:\n  augment: {flipp: false}\n": ("data.augment.flipp", "data.augment.flip"),
        "backbone:\n  overrides: {vision_widht: 64}\n": ("backbone.overrides.vision_widht",
                                                         "backbone.overrides.vision_width"),
        "evaluation:\n  batch_size: 8\n": ("evaluation", "eval"),
        "train:\n  max_text_len: 8\n": ("train.max_text_len", "data.max_text_len"),  # misplaced key
    }
    for i, (body, (bad, close)) in enumerate(cases.items()):
        path = write(tmp_path / f"c{i}.yaml", f"_base_: {CONFIG_DIR / 'irra_tiny.yaml'}\n{body}")
        with pytest.raises(ConfigKeyError) as err:
            load_experiment_config(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}: unknown config key {bad!r}") and repr(close) in msg, msg


def test_the_file_named_is_the_one_in_the_base_chain_that_holds_the_key(tmp_path: Path) -> None:
    write(tmp_path / "mid.yaml", f"_base_: {CONFIG_DIR / 'uca.yaml'}\nmethod:\n  num_sample: 3\n")
    top = write(tmp_path / "top.yaml", "_base_: mid.yaml\ntrain:\n  epochs: 1\n")
    with pytest.raises(ConfigKeyError, match=r"mid\.yaml: unknown config key 'method\.num_sample'; "
                                             r"did you mean 'method\.num_samples'"):
        load_experiment_config(top)


def test_method_keys_depend_on_the_method(tmp_path: Path) -> None:
    """A key of another method is refused: irra has no rerank_k."""
    path = write(tmp_path / "x.yaml", f"_base_: {CONFIG_DIR / 'irra.yaml'}\nmethod:\n  rerank_k: [4]\n")
    with pytest.raises(ConfigKeyError, match="unknown config key 'method.rerank_k'"):
        load_experiment_config(path)
    assert load_experiment_config(path, ["method.name=cada"])["method"]["rerank_k"] == [4]


def test_unknown_method_name_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "x.yaml", f"_base_: {CONFIG_DIR / 'irra.yaml'}\nmethod:\n  name: irrra\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: method.name 'irrra' is not a method; did you mean 'irra'"):
        load_experiment_config(path)
    with pytest.raises(ConfigError, match=r"override 'method.name=ucaa': .*did you mean 'uca'"):
        load_experiment_config("irra_tiny", ["method.name=ucaa"])


def test_overrides_under_a_schema() -> None:
    # any known key may be set, present in the files or not (irra.yaml does not list tau)
    cfg = load_experiment_config("irra_tiny", ["method.tau=0.05", "backbone.overrides.vision_layers=2",
                                               "train.compile_options.mode=max-autotune"])
    assert cfg["method"]["tau"] == 0.05 and cfg["backbone"]["overrides"]["vision_layers"] == 2
    assert cfg["train"]["compile_options"] == {"mode": "max-autotune"}  # free-form mapping
    # unknown keys are refused with or without '+', naming the override and the closest key
    for item in ("method.tauu=1", "+method.tauu=1"):
        with pytest.raises(ConfigKeyError) as err:
            load_experiment_config("irra_tiny", [item])
        assert str(err.value).startswith(f"override {item!r}: unknown config key 'method.tauu'")
        assert "did you mean 'method.tau'" in str(err.value) and "to add a new key" not in str(err.value)
    # a mapping value is checked key by key
    with pytest.raises(ConfigKeyError, match="'backbone.overrides.vision_widht'"):
        load_experiment_config("irra_tiny", ["backbone.overrides={vision_widht: 2}"])
    # '+' on a known key is the same as without it
    assert load_experiment_config("irra_tiny", ["+train.epochs=3"])["train"]["epochs"] == 3


def test_non_strict_loading_is_unchanged(tmp_path: Path) -> None:
    """Without a schema (other YAML files), unknown keys pass and '+' adds keys, as before."""
    path = write(tmp_path / "free.yaml", "anything: {goes: 1}\n")
    assert load_config(path, ["+new.key=2"]) == {"anything": {"goes": 1}, "new": {"key": 2}}


def test_cli_refuses_a_typo_before_reading_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One line on stderr, no traceback, and no data read (the data folder does not even exist)."""
    path = write(tmp_path / "typo.yaml", f"_base_: {CONFIG_DIR / 'irra_tiny.yaml'}\ntrain:\n  epoch: 2\n")
    code = main(["train", "--config", str(path), "--set", f"data.root={tmp_path / 'no-data'}",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tbps train: error: {path}: unknown config key 'train.epoch'; did you mean 'train.epochs'")
    assert not (tmp_path / "run").exists()
    code = main(["train", "--config", "irra_tiny", "--set", "train.lrr=1", "--out", str(tmp_path / "run")])
    assert code == 2 and "override 'train.lrr=1': unknown config key 'train.lrr'" in capsys.readouterr().err


def test_run_configs_are_loaded_strictly(tmp_path: Path) -> None:
    """A saved run config with a key the code no longer knows is refused by name, not ignored."""
    saved = write(tmp_path / "run" / "config.yaml", (CONFIG_DIR / "irra_tiny_scratch.yaml").read_text()
                  .replace("_base_: irra.yaml", f"_base_: {CONFIG_DIR / 'irra.yaml'}") + "\neval:\n  batch_sise: 4\n")
    with pytest.raises(ConfigKeyError, match=r"config\.yaml: unknown config key 'eval\.batch_sise'"):
        load_experiment_config(saved)


# ----------------------------------------------------------------------------- one source of defaults

@pytest.mark.parametrize("name", METHODS.names())
def test_method_yaml_and_code_defaults_agree(name: str) -> None:
    """A method's own YAML (configs/<name>.yaml) sets no method key to anything but the class's
    `defaults`, which are the one source; loading it gives exactly those defaults."""
    defaults = METHODS.get(name).defaults
    path = CONFIG_DIR / f"{name}.yaml"
    own = load_config(path)["method"]
    disagree = {k: (v, defaults.get(k, "<undeclared>")) for k, v in own.items()
                if k != "name" and defaults.get(k, "<undeclared>") != v}
    assert not disagree, f"{path} sets method keys differently from {name}'s defaults: {disagree}"
    assert load_experiment_config(path)["method"] == {**defaults, "name": name}


def _declared_defaults() -> dict[str, list[Any]]:
    """Leaf key name -> every default declared for it (base.yaml sections and every method)."""
    trees = [load_config(BASE_CONFIG)] + [{"method": METHODS.get(n).defaults} for n in METHODS.names()]
    out: dict[str, list[Any]] = {}
    for tree in trees:
        for dotted in flatten_keys(tree):
            value = get(tree, dotted)
            if not isinstance(value, dict):
                out.setdefault(dotted.rsplit(".", 1)[-1], []).append(value)
    return out


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def code_defaults_that_disagree(source: str, filename: str, declared: dict[str, list[Any]]) -> list[str]:
    """`x.get("<config key>", <literal>)` calls whose literal is none of the key's declared defaults."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)):
            continue
        key = node.args[0].value
        try:
            literal = _plain(ast.literal_eval(node.args[1]))
        except ValueError:
            continue
        if key in declared and literal not in [_plain(v) for v in declared[key]]:
            found.append(f"{filename}:{node.lineno}: {key} defaults to {literal!r} in code, "
                         f"declared {declared[key]!r}")
    return found


def test_the_disagreement_finder_finds_one() -> None:
    declared = {"weight_decay": [4e-5], "epochs": [60]}
    src = 'w = tcfg.get("weight_decay", 0.0)\ne = tcfg.get("epochs", 60)\nq = d.get("other", 1)\n'
    assert code_defaults_that_disagree(src, "x.py", declared) == [
        "x.py:1: weight_decay defaults to 0.0 in code, declared [4e-05]"]


def test_code_defaults_agree_with_declared_defaults() -> None:
    """No module falls back to a value for a config key other than the declared default (a second,
    disagreeing source, as `train.weight_decay` 0.0 vs 4e-5 once was)."""
    declared = _declared_defaults()
    found = []
    for path in sorted((ROOT / "src" / "tbps").rglob("*.py")):
        found += code_defaults_that_disagree(path.read_text(), str(path.relative_to(ROOT)), declared)
    assert not found, "\n".join(found)
