"""Layers point one way (data -> models -> methods -> engine / retrieval), and only methods/ knows
which methods exist: everything else asks a method through the `Method` interface."""
from __future__ import annotations

import re
from pathlib import Path

import tbps
from tbps.methods import METHODS

SRC = Path(tbps.__file__).parent
GENERIC = sorted([*SRC.joinpath("retrieval").rglob("*.py"), *SRC.joinpath("retrieval", "web").glob("*.*"),
                  SRC / "explain.py", *SRC.joinpath("engine").rglob("*.py")])


def _mentions(text: str, names: list[str]) -> list[str]:
    return [n for n in names if re.search(rf"(?<![A-Za-z0-9]){re.escape(n)}(?![A-Za-z0-9])", text, re.IGNORECASE)]


def test_retrieval_explain_and_engine_never_name_a_method():
    names = METHODS.names()
    assert {"irra", "cada", "uca", "clip_ft"} <= set(names) and len(GENERIC) > 15
    offenders = {str(p.relative_to(SRC)): found for p in GENERIC if (found := _mentions(p.read_text(), names))}
    assert offenders == {}, f"method names outside methods/: {offenders}"


def test_the_check_catches_a_mention_and_an_import():
    names = METHODS.names()
    assert _mentions("from ..methods.cada import CADA", names) == ["cada"]
    assert _mentions("re-ranking needs a CADA model", names) == ["cada"]
    assert _mentions("from ..methods import Method  # education, irradiance", names) == []


def test_methods_models_and_data_never_import_the_engine_or_the_product():
    upward = re.compile(r"^\s*(from|import)\s+(\.\.|tbps\.)(engine|retrieval|explain|cli|demo)\b", re.MULTILINE)
    for layer in ("methods", "models", "data"):
        for p in SRC.joinpath(layer).rglob("*.py"):
            assert not upward.search(p.read_text()), f"{p.relative_to(SRC)} imports a layer above it"


def test_no_module_reads_the_method_name_from_the_config_and_the_engine_calls_hooks_directly():
    for p in SRC.rglob("*.py"):
        text = p.read_text()
        # build_model is where the name becomes a method; experiment.py picks the method's config
        # schema by it (strict configs are checked before any method exists)
        if p.name not in ("build.py", "experiment.py"):
            assert '["method"]["name"]' not in text, p
    for p in SRC.joinpath("engine").rglob("*.py"):
        assert not re.search(r"(hasattr|getattr)\(method,", p.read_text()), p
