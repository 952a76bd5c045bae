"""The embedded benchmark (tbps.synth): format, determinism, caption faithfulness, difficulty."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbps.synth import (ATTRIBUTE_SLOTS, COLOURS, PRESETS, Preset, generate, is_current, make_captions,
                        sample_identity, sample_image_params, tokenize)
from tbps.synth.attributes import make_variant
from tbps.synth.presets import Difficulty

RAW_KEYS = {"split", "captions", "file_path", "processed_tokens", "id"}

# Words that may only appear when the matching slot is visible in the image.
LOWER_WORDS = ("trousers", "pants", "slacks", "jeans", "shorts", "skirt")
SHOE_WORDS = ("shoes", "sneakers", "trainers")
BAG_WORDS = ("backpack", "back pack", "handbag", "purse", "bag")
CARRIED_WORDS = {"umbrella": ("umbrella",), "phone": ("phone",), "bottle": ("bottle",), "cup": ("cup",)}
HEADWEAR_WORDS = ("cap", "hat", "beanie")


def _group(slot: str) -> str:
    """Attribute group of a slot: everything about the top garment is one group."""
    if slot in ("upper_pattern", "pattern_colour", "sleeve_length"):
        return "upper"
    return slot.split("_")[0]


def _has(caption: str, words: tuple[str, ...]) -> bool:
    text = caption.lower()
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def _check_caption(caption: str, vis: dict[str, bool], attrs: dict[str, object]) -> None:
    if not vis["lower_type"]:
        assert not _has(caption, LOWER_WORDS), (caption, "lower body not visible")
    if not vis["shoe_colour"]:
        assert not _has(caption, SHOE_WORDS), (caption, "shoes not visible")
    if not vis["bag"]:
        assert not _has(caption, BAG_WORDS), (caption, "bag not visible")
    for item, words in CARRIED_WORDS.items():
        if not (vis["carried"] and attrs["carried"] == item):
            assert not _has(caption, words), (caption, f"{item} not visible")
    if not vis["headwear"]:
        assert not _has(caption, HEADWEAR_WORDS), (caption, "no headwear visible")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate(out, preset="tiny", seed=0, workers=2, progress=False)
    return out


def _load(out: Path) -> tuple[list[dict], dict, dict]:
    raw = json.loads((out / "reid_raw.json").read_text())
    attrs = json.loads((out / "attributes.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    return raw, attrs, meta


def test_format(tiny: Path) -> None:
    raw, attrs, meta = _load(tiny)
    assert isinstance(raw, list) and raw
    p = PRESETS["tiny"]
    ids_by_split: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for e in raw:
        assert set(e) == RAW_KEYS
        assert e["split"] in ids_by_split
        assert isinstance(e["id"], int) and e["id"] >= 1
        ids_by_split[e["split"]].add(e["id"])
        assert isinstance(e["captions"], list) and len(e["captions"]) >= 2
        assert all(isinstance(c, str) and c.strip() for c in e["captions"])
        assert e["processed_tokens"] == [tokenize(c) for c in e["captions"]]
        for toks in e["processed_tokens"]:
            assert toks and all(t == t.lower() and " " not in t for t in toks)
        assert not e["file_path"].startswith("/") and e["file_path"].endswith(".png")
        assert (tiny / "imgs" / e["file_path"]).is_file()
    all_ids = set().union(*ids_by_split.values())
    assert min(all_ids) == 1 and all_ids == set(range(1, len(all_ids) + 1))
    assert not (ids_by_split["train"] & ids_by_split["val"])
    assert not (ids_by_split["train"] & ids_by_split["test"])
    assert not (ids_by_split["val"] & ids_by_split["test"])
    assert [len(ids_by_split[s]) for s in ("train", "val", "test")] == [p.n_train, p.n_val, p.n_test]
    assert len({e["file_path"] for e in raw}) == len(raw)
    for e in raw[:: max(1, len(raw) // 10)]:
        with Image.open(tiny / "imgs" / e["file_path"]) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert im.size == (p.width, p.height)  # PIL: (width, height)
    # meta / attributes agree with reid_raw
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and meta["num_images"] == len(raw)
    assert meta["height"] == 128 and meta["width"] == 64 and "version" in meta
    assert meta["num_captions"] == sum(len(e["captions"]) for e in raw)
    assert [im["file_path"] for im in attrs["images"]] == [e["file_path"] for e in raw]
    assert {i["id"] for i in attrs["identities"]} == all_ids
    for im in attrs["images"]:
        assert set(im["attributes"]) == set(ATTRIBUTE_SLOTS)
        assert im["view"] in ("front", "back", "side")
    assert len(ATTRIBUTE_SLOTS) >= 8 and len(COLOURS) >= 10
    assert not list(tiny.glob(".tmp-synth-*"))  # temp folder cleaned up


def test_reader_accepts_output(tiny: Path) -> None:
    datasets = pytest.importorskip("tbps.data.datasets")
    if not hasattr(datasets, "read_synth"):
        pytest.skip("no synth reader")
    ds = datasets.read_synth(tiny)
    assert ds.num_train_ids == PRESETS["tiny"].n_train
    assert ds.test.num_ids == PRESETS["tiny"].n_test


def test_determinism(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, preset="tiny", seed=0, workers=1, progress=False)  # other worker count
    for name in ("reid_raw.json", "attributes.json", "meta.json"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes(), name
    raw = json.loads((tiny / "reid_raw.json").read_text())
    for e in raw[:: max(1, len(raw) // 6)]:
        a = np.asarray(Image.open(tiny / "imgs" / e["file_path"]))
        b = np.asarray(Image.open(again / "imgs" / e["file_path"]))
        assert np.array_equal(a, b)
    other = tmp_path / "other"
    generate(other, preset="tiny", seed=1, workers=2, progress=False)
    assert (other / "reid_raw.json").read_bytes() != (tiny / "reid_raw.json").read_bytes()
    e = raw[0]
    a = np.asarray(Image.open(tiny / "imgs" / e["file_path"]))
    b = np.asarray(Image.open(other / "imgs" / e["file_path"]))
    assert not np.array_equal(a, b)


def test_rerun_replaces_cleanly(tmp_path: Path) -> None:
    mini = Preset("mini", 3, 1, 1, (2, 2))
    out = tmp_path / "d"
    generate(out, preset=mini, seed=3, workers=1, progress=False)
    first = (out / "reid_raw.json").read_bytes()
    generate(out, preset=mini, seed=4, workers=1, progress=False)
    raw = json.loads((out / "reid_raw.json").read_text())
    assert (out / "reid_raw.json").read_bytes() != first
    assert sorted(p.name for p in (out / "imgs" / "synth").iterdir()) == sorted(
        Path(e["file_path"]).name for e in raw)
    assert not list(out.glob(".tmp-synth-*"))


def test_is_current_spots_stale_renders(tmp_path: Path) -> None:
    """The demo and the ablations reuse a render only when preset, seed and knobs all match."""
    mini = Preset("mini", 3, 1, 1, (2, 2))
    out = tmp_path / "d"
    assert not is_current(out, preset=mini, seed=3)  # nothing there yet
    generate(out, preset=mini, seed=3, workers=1, progress=False)
    assert is_current(out, preset=mini, seed=3)
    assert not is_current(out, preset=mini, seed=4)
    assert not is_current(out, preset=mini, seed=3, height=64, width=32)
    recalibrated = Preset("mini", 3, 1, 1, (2, 2), difficulty=Difficulty(terse_frac=0.5))
    assert not is_current(out, preset=recalibrated, seed=3)
    meta = json.loads((out / "meta.json").read_text())
    meta["version"] = "0.0"
    (out / "meta.json").write_text(json.dumps(meta))
    assert not is_current(out, preset=mini, seed=3)


def test_captions_respect_visibility_in_output(tiny: Path) -> None:
    raw, attrs, _ = _load(tiny)
    hidden_lower = hidden_bag = 0
    for e, im in zip(raw, attrs["images"]):
        vis = {s: v["visible"] for s, v in im["attributes"].items()}
        values = {s: v["value"] for s, v in im["attributes"].items()}
        hidden_lower += not vis["lower_type"] and values["lower_type"] != "none"
        hidden_bag += not vis["bag"] and values["bag"] != "none"
        for c in e["captions"]:
            _check_caption(c, vis, values)
        assert len(im["caption_mentions"]) == len(e["captions"])
        for m in im["caption_mentions"]:
            assert all(vis[s] for s in m), (m, vis)
    assert hidden_lower > 0 and hidden_bag > 0  # the check above was exercised


def test_captions_respect_visibility_many() -> None:
    """Caption grammar alone, over many identities/views: never names a hidden attribute."""
    diff = Difficulty(occlusion_prob=0.5, terse_frac=0.3)
    rng = np.random.default_rng(123)
    seen_occluded = 0
    for i in range(1500):
        ident = sample_identity(rng)
        view = ("front", "back", "side")[i % 3]
        params = sample_image_params(ident, view, rng, diff)
        seen_occluded += params["occlusion"] == "lower"
        caps, terse, mentions = make_captions(ident, params, rng, 2, diff.terse_frac, diff.mention_prob)
        assert len(caps) == 2 and len(set(caps)) == 2
        for m in mentions:
            assert m and all(params["visible"][s] for s in m), m
        for c, t, m in zip(caps, terse, mentions):
            if t:  # terse: at most two attribute groups (besides gender)
                assert len({_group(s) for s in m if s not in ("gender",)}) <= 2, (c, m)
        for c in caps:
            assert c[0].isupper() and c.endswith(".")
            assert "  " not in c and " ," not in c
            assert not re.search(r"\ba [aeiou]", c.lower()), c
            _check_caption(c, params["visible"], ident["attributes"])
    assert seen_occluded > 100


def test_backpack_front_view_needs_straps() -> None:
    rng = np.random.default_rng(5)
    ident = sample_identity(rng)
    ident["attributes"].update(bag="backpack", bag_colour="red")
    diff = Difficulty(occlusion_prob=0.0)
    got = set()
    for _ in range(50):
        p = sample_image_params(ident, "front", rng, diff)
        assert p["visible"]["bag"] == p["straps_visible"]
        got.add(p["straps_visible"])
        assert sample_image_params(ident, "back", rng, diff)["visible"]["bag"]
    assert got == {True, False}


def test_terse_captions_exist(tiny: Path) -> None:
    raw, attrs, meta = _load(tiny)
    n_terse = sum(sum(im["terse_captions"]) for im in attrs["images"])
    frac = n_terse / meta["num_captions"]
    assert 0.05 < frac < 0.4
    lengths = [len(tokenize(c)) for e, im in zip(raw, attrs["images"])
               for c, t in zip(e["captions"], im["terse_captions"]) if t]
    full = [len(tokenize(c)) for e, im in zip(raw, attrs["images"])
            for c, t in zip(e["captions"], im["terse_captions"]) if not t]
    assert np.mean(lengths) < 0.6 * np.mean(full)


def test_confusable_pairs(tiny: Path) -> None:
    _, attrs, meta = _load(tiny)
    by_id = {i["id"]: i for i in attrs["identities"]}
    variants = [i for i in attrs["identities"] if i["variant_of"] is not None]
    assert variants and meta["num_variant_ids"] == len(variants)
    assert any(v["split"] == "test" for v in variants)
    linked = {"bag": {"bag", "bag_colour"}, "headwear": {"headwear", "headwear_colour"},
              "upper_type": {"upper_type", "sleeve_length"}, "upper_pattern": {"upper_pattern", "pattern_colour"},
              "swap_colours": {"upper_colour", "lower_colour"}}
    for v in variants:
        base = by_id[v["variant_of"]]
        assert base["split"] == v["split"] and base["variant_of"] is None
        changed = {s for s in ATTRIBUTE_SLOTS if base["attributes"][s] != v["attributes"][s]}
        assert changed, v
        assert changed <= linked.get(v["variant_change"], {v["variant_change"]}), (v["variant_change"], changed)
    # a swap variant keeps the two colours but exchanges them
    rng = np.random.default_rng(0)
    for _ in range(200):
        proto = sample_identity(rng)
        var, change = make_variant(proto, rng)
        if change == "swap_colours":
            a, b = proto["attributes"], var["attributes"]
            assert (a["upper_colour"], a["lower_colour"]) == (b["lower_colour"], b["upper_colour"])
            break
    else:
        pytest.fail("no swap variant drawn")


def test_custom_size(tmp_path: Path) -> None:
    mini = Preset("mini", 2, 1, 1, (2, 2))
    out = tmp_path / "big"
    s = generate(out, preset=mini, seed=0, height=384, width=128, workers=1, progress=False)
    assert s["height"] == 384 and s["width"] == 128 and s["num_images"] == 8
    raw = json.loads((out / "reid_raw.json").read_text())
    for e in raw:
        with Image.open(out / "imgs" / e["file_path"]) as im:
            assert im.size == (128, 384)
    assert json.loads((out / "meta.json").read_text())["height"] == 384


def test_bad_preset(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / "x", preset="huge", progress=False)


def test_attribute_oracle(tiny: Path) -> None:
    from tbps.synth import attribute_oracle

    r = attribute_oracle(tiny, "test")
    assert r["num_ids"] == PRESETS["tiny"].n_test
    assert r["chance_rank1"] < r["rank1_terse"] < r["rank1_full"] <= 1.0
    weak = attribute_oracle(tiny, "test", slots=["upper_colour"])
    assert weak["rank1"] <= r["rank1"]
