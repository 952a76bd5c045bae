"""The identity of the model an index was built with: weights, tokenizer and the config keys that
shape the embeddings, hashed. Adding to, or searching, an index through a model with another
identity is refused with a message naming both.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..utils import sha256_file

# config keys that change what an image or a caption is encoded to (not how runs train or rank)
_IDENTITY_KEYS = (("method",), ("backbone",), ("data", "image_size"), ("data", "max_text_len"),
                  ("data", "tokenizer"))


class ModelMismatchError(ValueError):
    """The model offered is not the one the index was built with."""


def model_identity(run: Any, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Identity of a loaded run: weights, tokenizer and embedding-relevant config, hashed.

    The weights' hash is reused from `recorded` when the file has the same path, size and
    modification time (hashing a 900 MB checkpoint costs seconds).
    """
    weights = Path(run.checkpoint) / "model.safetensors"
    st = weights.stat()
    path = str(weights.resolve())
    if (recorded and recorded.get("weights_path") == path and recorded.get("weights_size") == st.st_size
            and recorded.get("weights_mtime_ns") == st.st_mtime_ns and recorded.get("weights_sha256")):
        weights_sha = recorded["weights_sha256"]
    else:
        weights_sha = sha256_file(weights)
    tok = hashlib.sha256()
    tok_dir = Path(run.run_dir) / "tokenizer"
    if tok_dir.is_dir():
        for f in sorted(tok_dir.iterdir()):
            if f.is_file():
                tok.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    subset: dict[str, Any] = {}
    for keys in _IDENTITY_KEYS:
        node: Any = run.cfg
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        subset[".".join(keys)] = node
    cfg_sha = hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()
    fingerprint = hashlib.sha256(f"{weights_sha}\n{tok.hexdigest()}\n{cfg_sha}".encode()).hexdigest()
    bb = run.method.backbone.cfg
    return {"method": run.method.name, "capabilities": run.method.capabilities().to_dict(),
            "run_dir": str(Path(run.run_dir).resolve()),
            "checkpoint": str(Path(run.checkpoint).resolve()), "weights_path": path,
            "weights_size": int(st.st_size), "weights_mtime_ns": int(st.st_mtime_ns), "weights_sha256": weights_sha,
            "tokenizer_sha256": tok.hexdigest(), "config_sha256": cfg_sha, "fingerprint": fingerprint,
            "image_size": list(bb.image_size), "embed_dim": int(bb.embed_dim), "max_text_len": int(run.max_len)}


def check_same_model(index_dir: str | Path, recorded: dict[str, Any], offered: dict[str, Any]) -> None:
    if recorded["fingerprint"] == offered["fingerprint"]:
        return
    parts = [name for name, key in (("weights", "weights_sha256"), ("tokenizer", "tokenizer_sha256"),
                                    ("embedding config", "config_sha256")) if recorded.get(key) != offered.get(key)]
    raise ModelMismatchError(
        f"index {index_dir} was built with the {recorded['method']} model {recorded['checkpoint']} "
        f"(fingerprint {recorded['fingerprint'][:12]}), but the model offered is the {offered['method']} model "
        f"{offered['checkpoint']} (fingerprint {offered['fingerprint'][:12]}; different {', '.join(parts)}). "
        "Embeddings of different models are not comparable: search with the original model, or build a new "
        f"index with `tbps index build GALLERY --model {offered['run_dir']} --out NEW_INDEX`.")
