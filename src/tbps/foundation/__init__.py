"""The foundation checkpoints shipped inside the package, and the `foundation:<name>` reference to them.

A config names a shipped foundation instead of a path, so that it works wherever tbps is installed:

    backbone.pretrained: foundation:tiny-clip   ->  <package>/foundation/tiny-clip/model.safetensors
    data.tokenizer:      foundation:tiny-clip   ->  <package>/foundation/tiny-clip/tokenizer/

Each `foundation/<name>/` holds `model.safetensors` (the foreign key names the weight loader reads:
OpenAI-CLIP's for tiny-clip, BLIP's for tiny-blip), `tokenizer/`, `card.json` and `README.md` (the
model card), written by `tbps foundation ship`. Kept free of heavy imports: the config checks use it.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Mapping

PREFIX = "foundation:"
MODEL_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
CARD_JSON = "card.json"
CARD_README = "README.md"
# The foundations the project ships (tests/test_foundation.py checks each one that is present).
EXPECTED = ("tiny-clip", "tiny-blip")
# Config keys that may hold a reference, and which part of the foundation each one means.
REFERENCE_KEYS = {"backbone.pretrained": MODEL_FILE, "data.tokenizer": TOKENIZER_DIR}

__all__ = ["PREFIX", "MODEL_FILE", "TOKENIZER_DIR", "CARD_JSON", "CARD_README", "EXPECTED", "REFERENCE_KEYS",
           "foundation_root", "shipped", "is_reference", "resolve", "reference_problems"]


def foundation_root() -> Path:
    """The package's `foundation/` folder (src/tbps/foundation in a checkout)."""
    return Path(str(importlib.resources.files("tbps") / "foundation"))


def shipped(root: Path | None = None) -> list[str]:
    """Names of the foundations present (a folder holding the weights and the tokenizer), sorted."""
    root = foundation_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and (p / MODEL_FILE).is_file() and (p / TOKENIZER_DIR).is_dir())


def is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def resolve(value: Any, key: str = "backbone.pretrained", root: Path | None = None) -> Any:
    """The path a `foundation:<name>` value of config key `key` stands for; any other value unchanged.

    Raises FileNotFoundError naming the key, the value and the shipped foundations when `<name>`
    is not one of them.
    """
    if not is_reference(value):
        return value
    if key not in REFERENCE_KEYS:
        raise ValueError(f"{key}: {value!r}: a foundation reference is only read by {', '.join(REFERENCE_KEYS)}")
    root = foundation_root() if root is None else Path(root)
    name = value[len(PREFIX):].strip()
    if name not in shipped(root):
        have = shipped(root)
        listing = ", ".join(f"{PREFIX}{n}" for n in have) if have else "none"
        raise FileNotFoundError(
            f"{key}: {value!r} is not a shipped foundation (shipped: {listing}; looked in {root}). "
            f"`make foundation` regenerates {' and '.join(EXPECTED)}; or give a path to weights / a tokenizer folder")
    return str(root / name / REFERENCE_KEYS[key])


def reference_problems(cfg: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """One message per `foundation:` reference in `cfg` that names no shipped foundation."""
    problems = []
    for key in REFERENCE_KEYS:
        section, _, leaf = key.partition(".")
        node = cfg.get(section)
        value = node.get(leaf) if isinstance(node, Mapping) else None
        try:
            resolve(value, key, root)
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    return problems
