"""YAML experiment configs with inheritance and command-line overrides.

A config file may start with ``_base_: other.yaml`` (or a list of files),
resolved relative to the file itself. Bases are merged in order, then the file
on top: mappings merge key by key, lists and scalars are replaced. Command-line
overrides such as ``train.lr=1e-4`` are applied last; they may only change keys
that already exist (typos fail loudly with suggestions) unless written as
``+new.key=value``.

Strict loading: ``load_config(..., schema=...)`` checks every key of every file in the
``_base_`` chain, and every override, against the keys the schema knows, before anything else
happens; an unknown key is an error naming the file (or the override), the dotted key and the
closest known key. The schema's defaults are merged under the loaded config, so every known key
is present in the result. Under a schema the ``+`` prefix adds nothing: any known key may be set
(present or not) and nothing else may.

Values are parsed as YAML (safe loader) with one fix: scientific notation
without a dot (``1e-4``), which YAML 1.1 would keep as a string, is a float.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tbps.utils import atomic_write_text

__all__ = [
    "ConfigError",
    "ConfigKeyError",
    "FREE",
    "Schema",
    "check_keys",
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
    """A config file or override is invalid; `key`: the dotted key whose value is at fault, if one is."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ConfigKeyError(ConfigError, KeyError):
    """An override or lookup names a key the config does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


FREE = "<free-form mapping>"
"""A value in `Schema.known`: the mapping's keys are checked by the code that reads it, not here."""


@dataclass(frozen=True)
class Schema:
    """The keys a strict config may hold.

    `defaults`: every known key with the value it takes when no file sets it (merged under the
    loaded config). `known`: the allowed key tree; a mapping value lists the allowed sub-keys,
    `FREE` allows any, anything else is a leaf. Defaults to the tree of `defaults`.
    """

    defaults: dict[str, Any]
    known: dict[str, Any] | None = None

    def key_tree(self) -> dict[str, Any]:
        return self.defaults if self.known is None else self.known


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


def _load_with_bases(path: Path, stack: tuple[Path, ...],
                     layers: list[tuple[Path, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The file merged over its bases; `layers` (if given) receives every file's own keys, bases first."""
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"cycle in {BASE_KEY}: {chain}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        if layers is not None:
            layers.append((path, data))
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
        merged = merge_configs(merged, _load_with_bases(base_path.resolve(), (*stack, path), layers))
    if layers is not None:
        layers.append((path, data))
    return merge_configs(merged, data)


def load_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    search_dirs: Sequence[str | Path] = (),
    schema: Callable[[dict[str, Any]], Schema] | None = None,
) -> dict[str, Any]:
    """Load a YAML config, resolving ``_base_`` inheritance, then apply ``overrides``.

    ``path`` may be a file path or a bare name (``irra_tiny``) looked up, with or
    without ``.yaml``, in ``search_dirs`` when it does not exist relative to the cwd.
    With ``schema`` (called with the merged config, overrides applied, so it may depend on
    e.g. the method named there) loading is strict: see the module docstring.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not a single string")
    overrides = list(overrides)
    resolved = _resolve_path(path, search_dirs)
    if schema is None:
        return apply_overrides(_load_with_bases(resolved, ()), overrides)
    layers: list[tuple[Path, dict[str, Any]]] = []
    merged = _load_with_bases(resolved, (), layers)
    cfg = apply_overrides(merged, overrides, create=True)  # whether each key is known is checked below
    try:
        chosen = schema(cfg)
    except ConfigError as err:  # e.g. an unknown method name: say which file (or override) set it
        raise ConfigError(f"{_origin(err.key, layers, overrides, resolved)}: {err}") from None
    tree = chosen.key_tree()
    for file, data in layers:
        check_keys(data, tree, _display(file))
    for item in overrides:
        key, _, _ = _split_override(item)
        check_keys(_nested(key, cfg), tree, f"override {item!r}")
    return merge_configs(chosen.defaults, cfg)


def check_keys(data: Mapping[str, Any], known: Mapping[str, Any], where: str) -> None:
    """Raise `ConfigKeyError` for the first key of `data` that `known` (a `Schema` key tree) lacks,
    naming `where` (a file or an override), the dotted key and the closest known keys."""

    def walk(node: Mapping[str, Any], allowed: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if key not in allowed:
                raise _unknown_key(known, f"{prefix}{key}", where, strict=True)
            if isinstance(value, Mapping) and isinstance(allowed[key], Mapping):
                walk(value, allowed[key], f"{prefix}{key}.")

    walk(data, known, "")


def _nested(key: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Just the branch of `cfg` that leads to the dotted `key`, for checking one override."""
    parts = key.split(".")
    out: dict[str, Any] = {parts[-1]: get(cfg, key)}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def _display(path: Path) -> str:
    """A path as the user would write it: relative to the working folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _origin(key: str | None, layers: list[tuple[Path, dict[str, Any]]], overrides: Iterable[str],
            top: Path) -> str:
    """The override, else the last file, that sets the dotted `key` (else the file asked for)."""
    if key is not None:
        for item in reversed(list(overrides)):
            if _split_override(item)[0] == key:
                return f"override {item!r}"
        for file, data in reversed(layers):
            if get(data, key, None) is not None:
                return _display(file)
    return _display(top)


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


def _unknown_key(cfg: Mapping[str, Any], key: str, what: str, strict: bool = False) -> ConfigKeyError:
    """The error for an unknown `key`, with the closest keys of `cfg` (the one closest when `strict`,
    where '+' cannot add keys and is not suggested)."""
    candidates = flatten_keys(cfg)
    n = 1 if strict else 3
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, candidates, n=n, cutoff=0.6)
    if not close:  # maybe only the last part is misspelt or misplaced
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=n, cutoff=0.75)]
    if not close:  # or abbreviated / spelt out (eval <-> evaluation)
        close = [c for c in candidates if len(leaf) >= 3 and c.rsplit(".", 1)[-1].startswith(leaf)
                 or len(c.rsplit(".", 1)[-1]) >= 3 and leaf.startswith(c.rsplit(".", 1)[-1])][:n]
    msg = f"{what}: unknown config key {key!r}"
    if close:
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    else:
        msg += " (no similar key)"
    if not strict and what.startswith("override"):
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


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str], create: bool = False) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``key.path=value`` overrides applied in order.

    Values are YAML (``train.lr=1e-4``, ``loss.weights=[1,1,0.1]``, ``x=null``).
    Changing a key that does not exist is an error suggesting close matches;
    prefix the key with ``+`` to add it (intermediate mappings are created).
    With ``create`` every override may add its key (a schema checks them afterwards).
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not a single string")
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        key, raw, add = _split_override(item)
        add = add or create
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
