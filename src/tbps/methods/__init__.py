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
    return METHODS.get(name)(cfg, backbone, num_classes, tokenizer)


__all__ = ["METHODS", "Capabilities", "Method", "Ranking", "build_method", "register"]
