"""tbps: text-based person search."""
from __future__ import annotations

from typing import Any

__all__ = ["Searcher"]


def __getattr__(name: str) -> Any:
    # lazy, so `import tbps` does not load torch, faiss or a model
    if name == "Searcher":
        from .retrieval.searcher import Searcher

        return Searcher
    raise AttributeError(f"module 'tbps' has no attribute {name!r}")
