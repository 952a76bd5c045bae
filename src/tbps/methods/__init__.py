"""Methods are registered by name; adding one is one file plus one import line below."""
from typing import Callable

from ..registry import Registry

METHODS: Registry = Registry("method")


def register(name: str) -> Callable[[type], type]:
    """Register a `Method` subclass under `name`; the class (and every method built from it) knows it."""
    def decorator(cls: type) -> type:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


from . import irra  # noqa: E402,F401  (registers "irra")
from . import uca  # noqa: E402,F401  (registers "uca")
from . import cada  # noqa: E402,F401  (registers "cada")
from . import clip_ft  # noqa: E402,F401  (registers "clip_ft")
from . import blip_pretrain  # noqa: E402,F401  (registers "blip_pretrain")

from .base import Capabilities, Method, Ranking  # noqa: E402


def build_method(name: str, cfg: dict, backbone, num_classes: int, tokenizer) -> Method:
    check_method_config({"name": name, **cfg})
    return METHODS.get(name)(cfg, backbone, num_classes, tokenizer)


def check_method_config(cfg: dict) -> None:
    """Check the `method` section (its `name` and the scalar types of the method's own keys)."""
    cls = METHODS.get(cfg.get("name"))
    check_method_types({k: v for k, v in cfg.items() if k != "name"}, getattr(cls, "defaults", {}))


def check_method_types(cfg: dict, defaults: dict) -> None:
    """ValueError naming every `method.KEY` whose value is not of its default's scalar type
    (`method.cross_layers=abc`, `method.tau=null`), before the method is built."""
    problems = []
    for key, default in defaults.items():
        if key not in cfg or default is None or isinstance(default, (list, dict)):
            continue
        value = cfg[key]
        if isinstance(default, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        else:
            ok, what = isinstance(value, type(default)), f"a {type(default).__name__}"
        if not ok:
            problems.append(f"method.{key}: expected {what}, got {'null' if value is None else repr(value)}")
    if problems:
        raise ValueError("config: bad value" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems))


__all__ = ["METHODS", "Capabilities", "Method", "Ranking", "build_method", "check_method_config",
           "check_method_types", "register"]
