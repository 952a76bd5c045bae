"""YAML experiment configs with inheritance and command-line overrides.

A config file may start with ``_base_: other.yaml`` (or a list of files),
resolved relative to the file itself. Bases are merged in order, then the file
on top: mappings merge key by key, lists and scalars are replaced. Command-line
overrides such as ``train.lr=1e-4`` are applied last; they may only change keys
that already exist (typos fail loudly with suggestions) unless written as
``+new.key=value``.

Values are parsed as YAML (safe loader) with one fix: scientific notation
without a dot (``1e-4``), which YAML 1.1 would keep as a string, is a float.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tbps.utils import atomic_write_text

__all__ = [
    "ConfigError",
    "ConfigKeyError",
    "load_config",
    "apply_overrides",
    "merge_configs",
    "save_config",
    "get",
    "parse_value",
    "flatten_keys",
]

BASE_KEY = "_base_"
_MISSING = object()


class ConfigError(ValueError):
    """A config file or override is invalid."""


class ConfigKeyError(ConfigError, KeyError):
    """An override or lookup names a key the config does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also reads ``1e-4`` / ``5E3`` as floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


def parse_value(text: str) -> Any:
    """Parse an override value as YAML: ``3`` -> int, ``[1,2]`` -> list, ``null`` -> None.

    An empty value means the empty string. Text YAML cannot parse stays a string
    (``@run1``), except an unbalanced ``[...]``/``{...}``, which is surely a typo.
    """
    if text == "":
        return ""
    try:
        return _yaml_load(text)
    except yaml.YAMLError as err:
        if text.lstrip()[:1] in ("[", "{"):
            raise ConfigError(f"cannot parse value {text!r}: {err}") from err
        return text


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #
def _resolve_path(path: str | Path, search_dirs: Sequence[str | Path]) -> Path:
    """Find the config file: as given, then with ``.yaml``, then in each search dir."""
    path = Path(path)
    names = [path]
    if path.suffix not in (".yaml", ".yml"):
        names += [path.with_name(path.name + ".yaml"), path.with_name(path.name + ".yml")]
    candidates = list(names)
    if not path.is_absolute():
        candidates += [Path(d) / n for d in search_dirs for n in names]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(
        {p.stem for d in search_dirs if Path(d).is_dir() for p in Path(d).iterdir() if p.suffix in (".yaml", ".yml")}
    )
    msg = f"config {str(path)!r} not found (tried: {', '.join(str(c) for c in candidates)})"
    if available:
        close = difflib.get_close_matches(path.stem, available, n=3)
        msg += f"; did you mean {' or '.join(close)}?" if close else f"; available: {', '.join(available)}"
    raise FileNotFoundError(msg)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err})") from err
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base``: dicts merge, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_configs(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_bases(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"cycle in {BASE_KEY}: {chain}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, (str, os.PathLike)):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = Path(base).expanduser()
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        if not base_path.is_file():
            raise ConfigError(f"{path}: {BASE_KEY} file {base!r} not found (looked at {base_path})")
        merged = merge_configs(merged, _load_with_bases(base_path.resolve(), (*stack, path)))
    return merge_configs(merged, data)


def load_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    search_dirs: Sequence[str | Path] = (),
) -> dict[str, Any]:
    """Load a YAML config, resolving ``_base_`` inheritance, then apply ``overrides``.

    ``path`` may be a file path or a bare name (``irra_tiny``) looked up, with or
    without ``.yaml``, in ``search_dirs`` when it does not exist relative to the cwd.
    """
    resolved = _resolve_path(path, search_dirs)
    cfg = _load_with_bases(resolved, ())
    return apply_overrides(cfg, list(overrides))


# --------------------------------------------------------------------------- #
# overrides and access
# --------------------------------------------------------------------------- #
def flatten_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
    """All dotted key paths of ``cfg`` (inner nodes included), for messages and search."""
    keys: list[str] = []
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(flatten_keys(value, dotted + "."))
    return keys


def _unknown_key(cfg: Mapping[str, Any], key: str, what: str) -> ConfigKeyError:
    candidates = flatten_keys(cfg)
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    if not close:  # maybe only the last part is misspelt or misplaced
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75)]
    msg = f"{what}: unknown config key {key!r}"
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    else:
        msg += " (no similar key)"
    if what.startswith("override"):
        msg += f" Use '+{key}=...' to add a new key."
    return ConfigKeyError(msg)


def _split_override(item: str) -> tuple[str, str, bool]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, value = item.split("=", 1)
    key = key.strip()
    add = key.startswith("+")
    if add:
        key = key[1:]
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key or key part")
    return key, value.strip(), add


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied in order.

    Values are YAML (``train.lr=1e-4``, ``loss.weights=[1,1,0.1]``, ``x=null``).
    Changing a key that does not exist is an error suggesting close matches;
    prefix the key with ``+`` to add it (intermediate mappings are created).
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not a single string")
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        key, raw, add = _split_override(item)
        parts = key.split(".")
        node: dict[str, Any] = out
        for depth, part in enumerate(parts[:-1]):
            if part not in node:
                if not add:
                    raise _unknown_key(out, key, f"override {item!r}")
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override {item!r}: {where!r} is a {type(child).__name__} ({child!r}), not a mapping"
                )
            node = child
        if parts[-1] not in node and not add:
            raise _unknown_key(out, key, f"override {item!r}")
        node[parts[-1]] = parse_value(raw)
    return out


def get(cfg: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """Dotted lookup ``get(cfg, "train.lr")``; returns ``default`` or raises if absent."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif default is not _MISSING:
            return default
        else:
            raise _unknown_key(cfg, key, "get") if isinstance(cfg, Mapping) else ConfigKeyError(key)
    return node


# --------------------------------------------------------------------------- #
# saving
# --------------------------------------------------------------------------- #
def _plain(obj: Any) -> Any:
    """Tuples -> lists, paths -> str, so safe_dump accepts what code put in the dict."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML, atomically, keeping key order; reloads to the same dict."""
    text = yaml.safe_dump(_plain(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
