"""Session fixtures of the search tests: one tiny benchmark, one run of every method trained for
a few steps, a gallery folder with every supported format plus unreadable files, and indexes.

Imported by test_search.py and test_serve.py (`from search_fixtures import *`). Each fixture is
also memoised here, so that the work is done once per session even though pytest registers the
fixtures once per importing module.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from fixtures import cli_train_args, render_tiny_benchmark
from tbps.cli import main

_MEMO: dict[str, Any] = {}


def _once(key: str, make: Callable[[], Any]) -> Any:
    if key not in _MEMO:
        _MEMO[key] = make()
    return _MEMO[key]


CADA_RUN = [
    "backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
    "text_layers: 1, embed_dim: 32}",
    "method.decoder_layers=1", "method.rerank_k=[4]", "train.epochs=1", "train.batch_size=16",
    "train.log_every=4", "train.device=cpu", "data.tokenizer_vocab_size=300",
]
UCA_RUN = [
    "backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
    "text_layers: 1, embed_dim: 32}",
    "method.cross_layers=1", "method.num_samples=3", "train.epochs=1", "train.batch_size=16",
    "train.log_every=4", "train.amp=null", "train.device=cpu", "data.tokenizer_vocab_size=300",
]

TINY_CLIP = ["backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
             "text_layers: 1, embed_dim: 32}", "train.epochs=1", "train.batch_size=16", "train.log_every=4",
             "train.amp=null", "train.device=cpu", "data.tokenizer_vocab_size=300"]
IRRA_RUN = [*TINY_CLIP, "method.cross_layers=1"]
CLIP_FT_RUN = list(TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    return _once("data", lambda: render_tiny_benchmark(tmp_path_factory.mktemp("search-data") / "tiny"))


def _train(tmp_path_factory, config: str, data: Path, overrides: list[str]) -> Path:
    out = tmp_path_factory.mktemp(f"run-{config}") / "run"
    assert main(cli_train_args(config, data, out, overrides)) == 0
    return out


@pytest.fixture(scope="session")
def cada_run(tmp_path_factory, tiny_benchmark) -> Path:
    return _once("cada", lambda: _train(tmp_path_factory, "cada_tiny_scratch", tiny_benchmark, CADA_RUN))


@pytest.fixture(scope="session")
def uca_run(tmp_path_factory, tiny_benchmark) -> Path:
    return _once("uca", lambda: _train(tmp_path_factory, "uca_tiny_scratch", tiny_benchmark, UCA_RUN))


def _make_gallery(root: Path, data: Path) -> dict[str, Any]:
    """The test split's images in a nested folder, a few re-encoded as jpg / bmp / webp, plus an
    unreadable png, an empty jpg and a text file; -> paths and the captions of each image."""
    entries = json.loads((data / "reid_raw.json").read_text())
    test = [e for e in entries if e.get("split") == "test"]
    gallery = root / "gallery"
    captions: dict[str, list[str]] = {}
    formats = {0: ".jpg", 1: ".bmp", 2: ".webp"}
    for n, e in enumerate(test):
        src = data / "imgs" / e["file_path"]
        sub = gallery / ("cam_a" if n % 2 else "cam_b")
        sub.mkdir(parents=True, exist_ok=True)
        ext = formats.get(n, ".png")
        dst = sub / (src.stem + ext)
        if ext == ".png":
            shutil.copy(src, dst)
        else:
            with Image.open(src) as img:
                img.convert("RGB").save(dst, quality=95)
        captions[str(dst.resolve())] = e["captions"]
    (gallery / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (gallery / "empty.jpg").write_bytes(b"")
    (gallery / "notes.txt").write_text("not an image")
    return {"dir": gallery, "captions": captions, "unreadable": sorted(str((gallery / n).resolve())
                                                                       for n in ("broken.png", "empty.jpg"))}


@pytest.fixture(scope="session")
def gallery(tmp_path_factory, tiny_benchmark) -> dict[str, Any]:
    return _once("gallery", lambda: _make_gallery(tmp_path_factory.mktemp("search-gallery"), tiny_benchmark))


def _index_once(name: str, tmp_path_factory, gallery_dir: Path, run: Path, batch_size: int,
                backend: str = "faiss") -> Path:
    """Build an index of the gallery with `run` once per session (per backend)."""
    from tbps.retrieval.index import build_index

    def make() -> Path:
        out = tmp_path_factory.mktemp(f"{name}-{backend}") / "index"
        build_index(gallery_dir, run, out, batch_size=batch_size, backend=backend, progress=False,
                    log=lambda *a: None)
        return out

    return _once(f"{name}-{backend}", make)


@pytest.fixture(scope="session", params=["faiss", "milvus"])
def backend(request) -> str:
    """Where the cada / uca indexes' vectors are searched: every test using them runs on both."""
    return request.param


@pytest.fixture(scope="session")
def cada_index(tmp_path_factory, gallery, cada_run, backend) -> Path:
    return _index_once("cada-index", tmp_path_factory, gallery["dir"], cada_run, batch_size=8, backend=backend)


@pytest.fixture(scope="session")
def uca_index(tmp_path_factory, gallery, uca_run, backend) -> Path:
    return _index_once("uca-index", tmp_path_factory, gallery["dir"], uca_run, batch_size=16, backend=backend)


@pytest.fixture(scope="session")
def cada_searcher(cada_index):
    from tbps.retrieval.searcher import Searcher

    return _once(f"cada_searcher-{cada_index}", lambda: Searcher(cada_index))


@pytest.fixture(scope="session")
def uca_searcher(uca_index):
    from tbps.retrieval.searcher import Searcher

    return _once(f"uca_searcher-{uca_index}", lambda: Searcher(uca_index))


def _method_fixtures(method: str, overrides: list[str], batch_size: int = 16):
    """Session fixtures `<method>_run` (`<method>_tiny_scratch`, or `clip_ft_tiny`, trained with
    `overrides`), `<method>_index` and `<method>_searcher`."""
    config = f"{method}_tiny" if method == "clip_ft" else f"{method}_tiny_scratch"  # shrunk: no foundation

    @pytest.fixture(scope="session", name=f"{method}_run")
    def run(tmp_path_factory, tiny_benchmark) -> Path:
        return _once(method, lambda: _train(tmp_path_factory, config, tiny_benchmark, overrides))

    @pytest.fixture(scope="session", name=f"{method}_index")
    def index(tmp_path_factory, gallery, request) -> Path:
        run = request.getfixturevalue(f"{method}_run")
        return _index_once(f"{method}-index", tmp_path_factory, gallery["dir"], run, batch_size)

    @pytest.fixture(scope="session", name=f"{method}_searcher")
    def searcher(request):
        from tbps.retrieval.searcher import Searcher

        index_dir = request.getfixturevalue(f"{method}_index")
        return _once(f"{method}_searcher", lambda: Searcher(index_dir))

    return run, index, searcher


irra_run, irra_index, irra_searcher = _method_fixtures("irra", IRRA_RUN)
clip_ft_run, clip_ft_index, clip_ft_searcher = _method_fixtures("clip_ft", CLIP_FT_RUN)


def stored_features(index_dir: Path) -> tuple[list[int], list[dict], dict]:
    """(ids, items, features) of every row of an index, read straight from its shards."""
    import torch

    from tbps.retrieval.storage import read_manifest, read_shard

    m = read_manifest(index_dir)
    ids, items, parts = [], [], []
    for shard in m["shards"]:
        t, its = read_shard(Path(index_dir), shard)
        ids += t.pop("ids").tolist()
        items += its
        parts.append(t)
    feats = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
    return ids, items, feats
