"""Methods are registered by name; adding one is one file plus one import line below."""
from ..registry import Registry

METHODS: Registry = Registry("method")

from . import irra  # noqa: E402,F401  (registers "irra")
from . import uca  # noqa: E402,F401  (registers "uca")
from . import cada  # noqa: E402,F401  (registers "cada")

from .base import Method  # noqa: E402


def build_method(name: str, cfg: dict, backbone, num_classes: int, tokenizer) -> Method:
    return METHODS.get(name)(cfg, backbone, num_classes, tokenizer)


__all__ = ["METHODS", "Method", "build_method"]
