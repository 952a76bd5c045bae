"""The pretraining corpus (`tbps synth --preset pretrain`) and the held-out caption style (issue 12)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tbps.data import load_dataset
from tbps.synth import BENCHMARK_PRESETS, PRESETS, generate, tokenize
from tbps.synth.generator import STYLE_SHIFT_DIR, _draw_identities
from tbps.synth.web_captions import STYLE_SHIFT_MARKERS

PREFIX = replace(PRESETS["pretrain"], n_train=30)  # the corpus's first 30 identities (90 images)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    generate(out, preset=PREFIX, seed=0, height=64, width=32, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(out, preset="tiny", seed=0, height=64, width=32, workers=1, progress=False)
    return out


def _ident_key(ident: dict) -> str:
    return json.dumps({"attributes": ident["attributes"], "appearance": ident["appearance"]}, sort_keys=True)


def test_the_full_corpus_has_40k_images_and_shares_no_identity_with_any_benchmark_preset() -> None:
    p = PRESETS["pretrain"]
    assert p.n_train * p.images_per_id[0] >= 40_000 and p.n_val == p.n_test == 0
    corpus = _draw_identities(0, p)  # every identity of the whole corpus (cheap: no rendering)
    assert len(corpus) == p.n_train
    corpus_ids, corpus_keys = {i["id"] for i in corpus}, {_ident_key(i) for i in corpus}
    assert len(corpus_keys) == len(corpus)  # no identity drawn twice inside the corpus either
    for name in BENCHMARK_PRESETS:
        bench = _draw_identities(0, PRESETS[name])
        assert not corpus_ids & {i["id"] for i in bench}, name
        assert not corpus_keys & {_ident_key(i) for i in bench}, name
    assert "pretrain" not in BENCHMARK_PRESETS and {"tiny", "small", "full"} <= set(BENCHMARK_PRESETS)


def test_the_corpus_has_no_identity_labels_and_one_or_two_captions_per_image(corpus: Path) -> None:
    raw = json.loads((corpus / "reid_raw.json").read_text())
    assert len(raw) == 90 and {e["split"] for e in raw} == {"train"}
    assert len({e["id"] for e in raw}) == len(raw)  # every image its own id: identities are not given
    assert {len(e["captions"]) for e in raw} == {1, 2}
    truth = json.loads((corpus / "attributes.json").read_text())
    assert all(i["id"] > 10_000_000 for i in truth["identities"])  # the true identities are kept apart


def test_corpus_captions_are_noisier_and_broader_than_the_grammar(corpus: Path, benchmark: Path) -> None:
    meta = json.loads((corpus / "meta.json").read_text())
    n = meta["num_captions"]
    shares = {k: v / n for k, v in meta["caption_noise"].items()}
    assert 0.0 < shares["wrong"] <= 0.15, shares
    assert 0.2 <= shares["irrelevant"] <= 0.6, shares
    # partial descriptions are common, but most captions name what is there (corpus v2: a corpus of
    # mostly fragments pretrained a collapsed embedding, README "Foundation models")
    assert 0.2 <= shares["partial"] <= 0.5, shares
    web = [c for e in json.loads((corpus / "reid_raw.json").read_text()) for c in e["captions"]]
    grammar = [c for e in json.loads((benchmark / "reid_raw.json").read_text()) for c in e["captions"]]
    web_words = {w for c in web for w in tokenize(c)}
    grammar_words = {w for c in grammar for w in tokenize(c)}
    assert len(web_words - grammar_words) >= 30  # synonyms and scene words the grammar never uses
    lengths = [len(tokenize(c)) for c in web]
    assert min(lengths) <= 3 and max(lengths) >= 12  # from fragments to long lists
    assert sorted(lengths)[len(lengths) // 2] >= 10  # the median caption is not a fragment (v1: 8)
    assert not set(web) & set(grammar)


@pytest.mark.filterwarnings("ignore:synth. no usable")  # the folder holds a test split only
def test_the_held_out_style_is_used_by_neither_the_grammar_nor_the_corpus(corpus: Path, benchmark: Path) -> None:
    assert not (corpus / STYLE_SHIFT_DIR).exists()  # the corpus writes nothing of it
    shift = load_dataset("synth", benchmark / STYLE_SHIFT_DIR, check_images=True)
    bench = load_dataset("synth", benchmark)
    assert sorted(str(Path(p).resolve()) for p in shift.test.image_paths) == sorted(bench.test.image_paths)
    assert len(shift.test.captions) == len(bench.test.image_paths)  # one held-out caption per test image

    def has_marker(c: str) -> bool:
        text = " ".join(tokenize(c))
        return any(f" {m} " in f" {text} " for m in STYLE_SHIFT_MARKERS)

    assert all(has_marker(c) for c in shift.test.captions)
    for root in (corpus, benchmark):
        caps = [c for e in json.loads((root / "reid_raw.json").read_text()) for c in e["captions"]]
        assert not any(has_marker(c) for c in caps), root


def test_the_corpus_is_deterministic_whatever_the_worker_count(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, preset=PREFIX, seed=0, height=64, width=32, workers=2, progress=False)

    def digest(root: Path) -> str:
        h = hashlib.sha256((root / "reid_raw.json").read_bytes())
        for f in sorted((root / "imgs").rglob("*.png")):
            h.update(f.read_bytes())
        return h.hexdigest()

    assert digest(again) == digest(corpus)
    other = tmp_path / "seed1"
    generate(other, preset=replace(PREFIX, n_train=3), seed=1, height=64, width=32, workers=1, progress=False)
    assert json.loads((other / "reid_raw.json").read_text())[0]["captions"] != \
        json.loads((corpus / "reid_raw.json").read_text())[0]["captions"]


def test_a_corpus_of_the_retired_caption_style_is_not_current(corpus: Path, tmp_path: Path) -> None:
    """A corpus rendered with the first captions (`web`, which pretrained collapsed foundations) is
    rendered again by `make foundation` rather than reused."""
    from tbps.synth.generator import is_current
    assert is_current(corpus, PREFIX, 0, 64, 32)
    old = tmp_path / "old"
    old.mkdir()
    (old / "reid_raw.json").write_text((corpus / "reid_raw.json").read_text())
    meta = json.loads((corpus / "meta.json").read_text())
    assert meta["preset_config"]["caption_style"] == "web-v2"
    meta["preset_config"]["caption_style"] = "web"
    (old / "meta.json").write_text(json.dumps(meta))
    assert not is_current(old, PREFIX, 0, 64, 32)
