"""Type and range checks for the config values the engine reads, before any data is read.

`tbps.config` checks that keys exist; this module checks what they hold. A value of the wrong
type (`train.epochs=abc`), a null where a path or number is needed (`data.root=null`) or a number
out of range (`train.batch_size=0`) is refused with the key, the value and what was expected,
instead of a traceback deep in the loader or a run that trains zero steps.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Callable

from ..config import ConfigError

__all__ = ["check_config_types", "RUN_KEYS", "TRAIN_KEYS"]

_ABSENT = object()


def _integer(minimum: int | None = None) -> tuple[str, Callable[[Any], bool]]:
    what = "an integer" if minimum is None else ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
    return what, lambda v: isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)


def _number(low: float, high: float = math.inf, low_open: bool = False) -> tuple[str, Callable[[Any], bool]]:
    bounds = f"{'>' if low_open else '>='} {low}" + ("" if high == math.inf else f" and <= {high}")
    ok = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and (v > low if low_open else v >= low) and v <= high)
    return f"a number {bounds}", ok


def _text() -> tuple[str, Callable[[Any], bool]]:
    return "a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""


def _flag() -> tuple[str, Callable[[Any], bool]]:
    return "true or false", lambda v: isinstance(v, bool)


def _size() -> tuple[str, Callable[[Any], bool]]:
    return "[height, width] (two positive integers)", lambda v: (
        isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                              for x in v))


def _mapping() -> tuple[str, Callable[[Any], bool]]:
    return "a mapping", lambda v: isinstance(v, Mapping)


def _list_of_text() -> tuple[str, Callable[[Any], bool]]:
    return "a list of strings", lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


def _betas() -> tuple[str, Callable[[Any], bool]]:
    return "two numbers in [0, 1)", lambda v: (isinstance(v, (list, tuple)) and len(v) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in v))


def _optional(spec: tuple[str, Callable[[Any], bool]]) -> tuple[str, Callable[[Any], bool]]:
    what, ok = spec
    return f"null or {what}", lambda v: v is None or ok(v)


# Keys read when a run's model and data are loaded (eval, index, search, export, explain).
RUN_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "method.name": _text(),
    "backbone.name": _text(),
    "backbone.pretrained": _optional(_text()),
    "data.dataset": _text(),
    "data.root": _text(),
    "data.max_text_len": _integer(1),
    "data.image_size": _optional(_size()),
    "eval.batch_size": _integer(1),
}

# Keys read by `tbps train` on top of those.
TRAIN_KEYS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **RUN_KEYS,
    "seed": _integer(0),
    "backbone.pretrained_trust_pickle": _flag(),
    "backbone.overrides": _optional(_mapping()),
    "backbone.pretrained_allow_missing": _optional(_list_of_text()),
    "data.tokenizer": _text(),
    "data.tokenizer_path": _optional(_text()),
    "data.augment": _optional(_mapping()),
    "data.augment.flip": _flag(),
    "data.augment.random_crop": _flag(),
    "data.augment.pad": _integer(0),
    "data.augment.erasing": _number(0.0, 1.0),
    "data.tokenizer_vocab_size": _integer(1),
    "data.instances_per_id": _integer(1),
    "data.num_workers": _integer(0),
    "data.prefetch_factor": _integer(1),
    "data.cache_images": _flag(),
    "data.cache_threads": _optional(_integer(1)),
    "data.check_images": _flag(),
    "data.strict": _flag(),
    "data.allow_outside_root": _flag(),
    "data.val_from_train": _number(0.0, 1.0),
    "data.eval_root": _optional(_text()),
    "data.eval_dataset": _text(),
    "train.eps": _number(0.0, low_open=True),
    "train.epochs": _integer(1),
    "train.batch_size": _integer(1),
    "train.optimizer": _text(),
    "train.betas": _betas(),
    "train.lr": _number(0.0, low_open=True),
    "train.weight_decay": _number(0.0),
    "train.new_module_lr_mult": _number(0.0, low_open=True),
    "train.warmup_epochs": _number(0.0),
    "train.min_lr_ratio": _number(0.0, 1.0),
    "train.grad_clip": _optional(_number(0.0, low_open=True)),
    "train.log_every": _integer(1),
    "train.eval_every": _integer(1),
    "train.ckpt_every_steps": _optional(_integer(0)),
    "train.stop_after_steps": _optional(_integer(1)),
}


def _lookup(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _shown(value: Any) -> str:
    """A value as it would be written in YAML or --set (null, true), else its repr."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def check_config_types(cfg: Mapping[str, Any], keys: Mapping[str, tuple[str, Callable[[Any], bool]]] = TRAIN_KEYS,
                       source: str = "config") -> None:
    """Raise ConfigError naming every key in `keys` whose value has the wrong type or range.

    A key the config does not have is left to the reader's default; a section that is not a
    mapping (`train: 3`) is reported as such. With TRAIN_KEYS the method's own keys are checked too.
    """
    problems: list[str] = []
    for section in sorted({k.split(".")[0] for k in keys if "." in k}):
        if section in cfg and not isinstance(cfg[section], Mapping):
            problems.append(f"{section}: expected a mapping of settings, got {_shown(cfg[section])}")
    for key, (what, ok) in keys.items():
        value = _lookup(cfg, key)
        if value is _ABSENT or ok(value):
            continue
        problems.append(f"{key}: expected {what}, got {_shown(value)}")
    if not problems and keys is TRAIN_KEYS:  # foundation:<name> must name a shipped foundation
        from ..foundation import reference_problems

        problems += reference_problems(cfg)
    method = cfg.get("method")
    if not problems and keys is TRAIN_KEYS and isinstance(method, Mapping):
        from ..methods import check_method_config  # the method's own keys, typed by its defaults

        check_method_config(method)
    if problems:
        raise ConfigError(f"{source}: bad value{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))
