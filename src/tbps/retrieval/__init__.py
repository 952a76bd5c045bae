"""Search your own gallery: an on-disk index (`index` builds it, `storage` reads and writes the
folder, `identity` names its model), FAISS search (`faiss_index`), the
`Searcher` API, the FastAPI service and page (`serve`) and ONNX export (`export`).

Names are imported lazily so that `import tbps.retrieval` stays light (no faiss / torch models).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Searcher": "searcher", "SearchResults": "searcher", "Hit": "searcher",
    "build_index": "index", "add_to_index": "index", "remove_from_index": "index", "read_manifest": "storage",
    "ModelMismatchError": "identity", "create_app": "serve", "serve": "serve", "export_onnx": "export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
