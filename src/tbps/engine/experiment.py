"""Experiment configs are strict: the keys they may hold, their defaults, and the loader that checks them.

Where each default lives (the one place to add a key):
  method:      the `defaults` of the method's class (`DEFAULTS` in methods/<name>.py)
  every other section (seed, backbone, data, train, eval): configs/base.yaml
  backbone.overrides: the fields of models.backbone.BackboneConfig
Free-form mappings, whose keys the code reading them checks: train.compile_options (torch.compile's
keyword arguments) and backbone.overrides.extra.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import FREE, ConfigError, Schema, load_config, merge_configs
from ..methods import METHODS
from ..models import BackboneConfig

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"


@lru_cache(maxsize=1)
def _base_defaults() -> dict[str, Any]:
    return load_config(BASE_CONFIG)


def method_defaults(name: str) -> dict[str, Any]:
    """The `method:` section a config naming method `name` starts from (its class's `defaults`)."""
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), METHODS.names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"method.name {name!r} is not a method; {hint}known: {', '.join(METHODS.names())}",
                          key="method.name")
    cls = METHODS.get(name)
    if not isinstance(getattr(cls, "defaults", None), dict):
        raise ConfigError(f"method {name!r} declares no `defaults` (a dict of its config keys) on its class",
                          key="method.name")
    return merge_configs(cls.defaults, {"name": name})


def experiment_schema(cfg: dict[str, Any]) -> Schema:
    """The keys and defaults of a config for the method it names (configs/base.yaml's by default)."""
    base = _base_defaults()
    method = cfg.get("method") or {}
    if not isinstance(method, dict):
        raise ConfigError(f"method must be a mapping (name: <method>, ...), got {method!r}", key="method")
    name = method.get("name", base["method"]["name"])
    defaults = merge_configs(base, {"method": method_defaults(name)})
    known = merge_configs(defaults, {
        "backbone": {"overrides": {f.name: FREE if f.name == "extra" else None for f in fields(BackboneConfig)}},
        "train": {"compile_options": FREE},
    })
    return Schema(defaults, known)


def load_experiment_config(path: str | Path, overrides: Iterable[str] = (),
                           search_dirs: Sequence[str | Path] = (CONFIG_DIR,)) -> dict[str, Any]:
    """Load an experiment config strictly (every key of every file and override checked, defaults
    filled in) from a path or a name in configs/ (e.g. a method's tiny config), before any data is read."""
    return load_config(path, list(overrides), search_dirs, schema=experiment_schema)
