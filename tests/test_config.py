"""Tests for tbps.config: _base_ inheritance, overrides, search path, errors, saving."""
from __future__ import annotations

from pathlib import Path

import pytest

from tbps.config import (
    ConfigError,
    ConfigKeyError,
    apply_overrides,
    flatten_keys,
    get,
    load_config,
    merge_configs,
    save_config,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


BASE = """
model:
  name: base
  dim: 512
  layers: [1, 2, 3]
train:
  lr: 1e-4
  epochs: 60
  milestones: [20, 40]
loss:
  weights: [1, 1]
data:
  root: data
flag: false
"""


@pytest.fixture()
def cfg_dir(tmp_path: Path) -> Path:
    write(tmp_path / "base.yaml", BASE)
    write(
        tmp_path / "child.yaml",
        """
_base_: base.yaml
model:
  name: child
train:
  milestones: [5]
  warmup: 2
""",
    )
    return tmp_path


def test_base_merge_deep_and_replace(cfg_dir: Path) -> None:
    cfg = load_config(cfg_dir / "child.yaml")
    assert cfg["model"] == {"name": "child", "dim": 512, "layers": [1, 2, 3]}  # dict merged deeply
    assert cfg["train"]["milestones"] == [5]  # list replaced, not appended
    assert cfg["train"]["warmup"] == 2 and cfg["train"]["epochs"] == 60
    assert cfg["train"]["lr"] == pytest.approx(1e-4) and isinstance(cfg["train"]["lr"], float)
    assert "_base_" not in cfg


def test_multiple_and_nested_bases(tmp_path: Path) -> None:
    write(tmp_path / "common" / "a.yaml", "x: 1\nd: {p: 1, q: 1}\n")
    write(tmp_path / "common" / "b.yaml", "_base_: a.yaml\nx: 2\nd: {q: 2}\ny: b\n")  # relative to b.yaml
    write(tmp_path / "common" / "c.yaml", "d: {r: 3}\ny: c\n")
    write(tmp_path / "exp" / "run.yaml", "_base_: [../common/b.yaml, ../common/c.yaml]\nz: 0\n")
    cfg = load_config(tmp_path / "exp" / "run.yaml")
    # later bases win over earlier ones, the file wins over all
    assert cfg == {"x": 2, "d": {"p": 1, "q": 2, "r": 3}, "y": "c", "z": 0}


def test_diamond_is_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path / "root.yaml", "a: 1\n")
    write(tmp_path / "l.yaml", "_base_: root.yaml\nl: 1\n")
    write(tmp_path / "r.yaml", "_base_: root.yaml\nr: 1\n")
    write(tmp_path / "top.yaml", "_base_: [l.yaml, r.yaml]\n")
    assert load_config(tmp_path / "top.yaml") == {"a": 1, "l": 1, "r": 1}


def test_base_cycle_detected(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\nx: 1\n")
    write(tmp_path / "b.yaml", "_base_: c.yaml\n")
    write(tmp_path / "c.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle.*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path / "self.yaml", "_base_: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_missing_base_named(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml.*nope\.yaml"):
        load_config(tmp_path / "a.yaml")


def test_yaml_error_names_file(tmp_path: Path) -> None:
    write(tmp_path / "good.yaml", "_base_: broken.yaml\n")
    write(tmp_path / "broken.yaml", "a: [1, 2\nb: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML"):
        load_config(tmp_path / "good.yaml")
    write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping"):
        load_config(tmp_path / "list.yaml")
    write(tmp_path / "empty.yaml", "")
    assert load_config(tmp_path / "empty.yaml") == {}


def test_search_dirs(cfg_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in ("child", "child.yaml"):
        assert load_config(name, search_dirs=[cfg_dir])["model"]["name"] == "child"
    # a file relative to the cwd wins over the search dirs
    write(elsewhere / "child.yaml", "model: {name: local}\n")
    assert load_config("child", search_dirs=[cfg_dir])["model"]["name"] == "local"
    with pytest.raises(FileNotFoundError, match="did you mean child"):
        load_config("chlid", search_dirs=[cfg_dir])
    with pytest.raises(FileNotFoundError, match="'zzz' not found.*available: base, child"):
        load_config("zzz", search_dirs=[cfg_dir])


def test_not_found_without_search_dirs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_values(cfg_dir: Path) -> None:
    cfg = load_config(
        cfg_dir / "child.yaml",
        [
            "train.lr=3e-5",
            "model.name=tiny",
            "data.root=/x/y",
            "train.epochs=3",
            "loss.weights=[1,1,0.1]",
            "flag=true",
            "model.dim=null",
            "+new.deep.key=3",
            "+top=hello world",
            "model.layers=",
        ],
    )
    assert cfg["train"]["lr"] == pytest.approx(3e-5)
    assert cfg["model"]["name"] == "tiny"
    assert cfg["data"]["root"] == "/x/y"
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["loss"]["weights"] == [1, 1, 0.1]
    assert cfg["flag"] is True
    assert cfg["model"]["dim"] is None
    assert cfg["new"] == {"deep": {"key": 3}}
    assert cfg["top"] == "hello world"
    assert cfg["model"]["layers"] == ""


def test_overrides_do_not_mutate_input() -> None:
    cfg = {"a": {"b": 1}}
    out = apply_overrides(cfg, ["a.b=2"])
    assert cfg == {"a": {"b": 1}} and out == {"a": {"b": 2}}


def test_unknown_override_key_suggests(cfg_dir: Path) -> None:
    cfg = load_config(cfg_dir / "child.yaml")
    with pytest.raises(ConfigKeyError, match=r"'train\.lrr'.*did you mean 'train\.lr'.*\+train\.lrr="):
        apply_overrides(cfg, ["train.lrr=1"])
    with pytest.raises(KeyError, match=r"did you mean 'train\.epochs'"):
        apply_overrides(cfg, ["trian.epochs=1"])  # also a KeyError
    with pytest.raises(ConfigKeyError, match=r"'model\.dimm'"):
        apply_overrides(cfg, ["model.dimm=1"])
    with pytest.raises(ConfigKeyError, match="no similar key"):
        apply_overrides(cfg, ["qqqqqq=1"])


def test_bad_override_syntax() -> None:
    cfg = {"a": {"b": 1}, "s": 3}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides(cfg, ["a.b"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides(cfg, ["a..b=1"])
    with pytest.raises(ConfigError, match=r"'s' is a int"):
        apply_overrides(cfg, ["+s.t=1"])
    with pytest.raises(ConfigError, match="cannot parse"):
        apply_overrides(cfg, ["a.b=[1, 2"])
    with pytest.raises(TypeError):
        apply_overrides(cfg, "a.b=2")  # type: ignore[arg-type]
    # '=' inside the value is kept, '+' on an existing key just sets it
    assert apply_overrides(cfg, ["a.b=x=y", "+s=4"]) == {"a": {"b": "x=y"}, "s": 4}


def test_get_dotted() -> None:
    cfg = {"a": {"b": {"c": 5}}, "n": None}
    assert get(cfg, "a.b.c") == 5
    assert get(cfg, "a.b") == {"c": 5}
    assert get(cfg, "n") is None
    assert get(cfg, "a.x.c", default=7) == 7
    assert get(cfg, "a.b.c.d", default=None) is None
    with pytest.raises(KeyError, match=r"'a\.b\.d'.*did you mean 'a\.b\.c'"):
        get(cfg, "a.b.d")


def test_merge_configs_does_not_alias() -> None:
    base = {"a": {"l": [1]}, "s": 1}
    merged = merge_configs(base, {"a": {"m": 2}, "s": {"now": "dict"}})
    merged["a"]["l"].append(2)
    assert base == {"a": {"l": [1]}, "s": 1}
    assert merged == {"a": {"l": [1, 2], "m": 2}, "s": {"now": "dict"}}


def test_save_roundtrip(cfg_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(cfg_dir / "child.yaml", ["+extra.tuple=[1, 2]", "+extra.tiny=1e-12"])
    cfg["extra"]["path"] = tmp_path / "p"
    cfg["extra"]["tup"] = (1, 2)
    out = tmp_path / "out" / "resolved.yaml"
    save_config(cfg, out)
    again = load_config(out)
    assert again["extra"]["path"] == str(tmp_path / "p")
    assert again["extra"]["tup"] == [1, 2]
    del cfg["extra"]["path"], cfg["extra"]["tup"], again["extra"]["path"], again["extra"]["tup"]
    assert again == cfg
    assert list(again) == list(cfg)  # key order kept
    assert [p.name for p in out.parent.iterdir()] == ["resolved.yaml"]  # no temp files left


def test_flatten_keys() -> None:
    assert flatten_keys({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == ["a", "a.b", "a.c", "a.c.d", "e"]
