"""The native dataset readers: formats, remapping, captions, and every load-time check."""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import pytest
from fixtures import (
    DELETE,
    Fixture,
    write_cuhk_fixture,
    write_icfg_fixture,
    write_rstp_fixture,
)

from tbps.data import DATASETS, Dataset, DatasetWarning, EvalSplit, TrainSample, load_dataset


def _load(name: str, root: Path | str, **kw: object) -> tuple[Dataset, list[str]]:
    """Load and return the DatasetWarning messages raised along the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(name, root, **kw)
    msgs = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    assert msgs == ds.warnings
    return ds, msgs


def _expected_train_pids(fx: Fixture) -> dict[int, int]:
    return {pid: k for k, pid in enumerate(sorted({e["id"] for e in fx.split_entries("train")}))}


def _check_eval(split: EvalSplit, fx: Fixture, name: str) -> None:
    entries = fx.split_entries(name)
    assert split.image_paths == [str(fx.image_file(e)) for e in entries]
    assert split.image_pids == [e["id"] for e in entries]
    assert split.captions == [c for e in entries for c in e["captions"]]
    assert split.caption_pids == [e["id"] for e in entries for _ in e["captions"]]
    assert split.caption_image_index == [i for i, e in enumerate(entries) for _ in e["captions"]]
    assert (split.num_ids, split.num_images, split.num_queries) == fx.counts(name)
    for p in split.image_paths:
        assert os.path.isabs(p) and os.path.isfile(p)


def _check_train(ds: Dataset, fx: Fixture) -> None:
    entries = fx.split_entries("train")
    remap = _expected_train_pids(fx)
    expected = [
        TrainSample(str(fx.image_file(e)), c, remap[e["id"]], i)
        for i, e in enumerate(entries)
        for c in e["captions"]
    ]
    assert ds.train == expected
    assert ds.num_train_ids == len(remap)
    for s in ds.train:
        assert os.path.isabs(s.image_path) and os.path.isfile(s.image_path)


# --------------------------------------------------------------------------- formats


def test_registry_names_and_unknown() -> None:
    assert DATASETS.names() == ["cuhk-pedes", "icfg-pedes", "rstpreid", "synth", "synth-pretrain"]
    with pytest.raises(KeyError, match="cuhk-pedes"):
        load_dataset("cuhk", "/nonexistent")


def test_cuhk_reads_native_layout(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path)
    ds, _ = _load("cuhk-pedes", tmp_path)
    assert ds.name == "cuhk-pedes" and ds.root == tmp_path.resolve()
    assert fx.entries[0]["id"] == 1  # 1-based ids, kept as they are in eval splits
    assert ds.num_train_ids == 4 and len(ds.train) == 4 * 2 * 2
    _check_train(ds, fx)
    assert ds.val is not None
    _check_eval(ds.val, fx, "val")
    _check_eval(ds.test, fx, "test")
    assert ds.val.image_pids == [5, 5] and ds.test.image_pids == [6, 6]
    # mixed extensions and CUHK source folders are read as they are
    suffixes = {Path(s.image_path).suffix for s in ds.train}
    assert suffixes == {".jpg", ".png", ".bmp"}


def test_icfg_reads_native_layout(tmp_path: Path) -> None:
    fx = write_icfg_fixture(tmp_path)
    ds, _ = _load("icfg-pedes", tmp_path)
    assert ds.val is None
    assert fx.entries[0]["id"] == 0  # 0-based
    _check_train(ds, fx)
    _check_eval(ds.test, fx, "test")
    assert ds.test.num_images == ds.test.num_queries  # one caption per image
    assert all("/imgs/train/" in s.image_path for s in ds.train)
    assert all("/imgs/test/" in p for p in ds.test.image_paths)


def test_rstp_reads_native_layout(tmp_path: Path) -> None:
    fx = write_rstp_fixture(tmp_path)
    assert "img_path" in fx.entries[0] and "file_path" not in fx.entries[0]
    ds, _ = _load("rstpreid", tmp_path)
    _check_train(ds, fx)
    assert ds.val is not None
    _check_eval(ds.val, fx, "val")
    _check_eval(ds.test, fx, "test")
    assert len(ds.train) == 4 * 5 * 2
    assert all(Path(p).parent == tmp_path.resolve() / "imgs" for p in ds.test.image_paths)


def test_synth_reads_cuhk_layout_without_stats_check(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path)
    ds, msgs = _load("synth", tmp_path)
    assert ds.name == "synth" and msgs == []
    _check_train(ds, fx)


def test_captions_per_image_and_image_index(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path, shuffle=True, images_per_id=3, captions_per_image=3)
    ds, _ = _load("cuhk-pedes", tmp_path)
    by_image: dict[str, list[str]] = {}
    index_of: dict[str, int] = {}
    for s in ds.train:
        by_image.setdefault(s.image_path, []).append(s.caption)
        assert index_of.setdefault(s.image_path, s.image_index) == s.image_index
    for e in fx.split_entries("train"):
        assert by_image[str(fx.image_file(e))] == e["captions"]
    # image indices number the train images 0..n-1 in file order
    first_seen = list(dict.fromkeys(s.image_path for s in ds.train))
    assert [index_of[p] for p in first_seen] == list(range(len(first_seen)))


def test_pid_remap_sorted_by_original_id_and_independent_of_file_order(tmp_path: Path) -> None:
    a = write_cuhk_fixture(tmp_path / "a", n_ids=8, seed=3)
    b = write_cuhk_fixture(tmp_path / "b", n_ids=8, seed=3, shuffle=True)
    assert [e["id"] for e in b.entries] != [e["id"] for e in a.entries]
    ds_a, _ = _load("cuhk-pedes", a.root)
    ds_b, _ = _load("cuhk-pedes", b.root)
    label_a = {Path(s.image_path).name: s.pid for s in ds_a.train}
    label_b = {Path(s.image_path).name: s.pid for s in ds_b.train}
    assert label_a == label_b
    remap = _expected_train_pids(b)
    assert sorted(set(label_b.values())) == list(range(ds_b.num_train_ids))
    for e in b.split_entries("train"):
        assert label_b[Path(e["file_path"]).name] == remap[e["id"]]


def test_determinism(tmp_path: Path) -> None:
    write_rstp_fixture(tmp_path, shuffle=True, duplicate_captions=True, messy_whitespace=True)
    first, w1 = _load("rstpreid", tmp_path)
    second, w2 = _load("rstpreid", tmp_path)
    assert first == second and w1 == w2


# --------------------------------------------------------------------------- file names / roots


@pytest.mark.parametrize(
    ("name", "writer", "annotation"),
    [
        ("cuhk-pedes", write_cuhk_fixture, "reid_raw.json"),
        ("cuhk-pedes", write_cuhk_fixture, "CUHK-PEDES.json"),
        ("icfg-pedes", write_icfg_fixture, "ICFG-PEDES.json"),
        ("icfg-pedes", write_icfg_fixture, "ICFG_PEDES.json"),
        ("rstpreid", write_rstp_fixture, "data_captions.json"),
    ],
)
@pytest.mark.parametrize("subfolder", [False, True])
def test_alternative_names_and_parent_root(
    tmp_path: Path, name: str, writer: object, annotation: str, subfolder: bool
) -> None:
    fx = writer(tmp_path, annotation_name=annotation, subfolder=subfolder)  # type: ignore[operator]
    ds, _ = _load(name, tmp_path)
    assert ds.root == fx.base.resolve()
    _check_train(ds, fx)
    # the annotation file itself is accepted as a root too
    ds2, _ = _load(name, fx.annotation)
    assert ds2 == ds


def test_missing_root_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as exc:
        load_dataset("cuhk-pedes", tmp_path / "nowhere")
    assert "nowhere" in str(exc.value)


def test_missing_annotation_names_paths_tried(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset("icfg-pedes", tmp_path)
    msg = str(exc.value)
    for tried in ("ICFG-PEDES.json", "ICFG_PEDES.json", str(tmp_path / "ICFG-PEDES" / "ICFG_PEDES.json")):
        assert tried in msg


def test_caption_all_without_split_explains(tmp_path: Path) -> None:
    write_cuhk_fixture(tmp_path, annotation_name="caption_all.json", include_split=False)
    with pytest.raises(FileNotFoundError, match="caption_all.json") as exc:
        load_dataset("cuhk-pedes", tmp_path)
    assert "split" in str(exc.value) and "reid_raw.json" in str(exc.value)


def test_split_field_missing_everywhere(tmp_path: Path) -> None:
    write_cuhk_fixture(tmp_path, include_split=False)
    with pytest.raises(ValueError, match=r"entry 0: field 'split': missing key"):
        load_dataset("cuhk-pedes", tmp_path)


# --------------------------------------------------------------------------- missing images


def test_missing_images_warn_with_count_and_paths(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path, missing_images=3)
    ds, msgs = _load("cuhk-pedes", tmp_path)
    missing_msgs = [m for m in msgs if "missing" in m]
    assert len(missing_msgs) == 1
    assert "3 of 12 image files are missing" in missing_msgs[0]
    assert fx.missing[0] in missing_msgs[0]
    kept = {s.image_path for s in ds.train}
    assert len(kept) == 8 - 3 and len(ds.train) == (8 - 3) * 2
    assert all(os.path.isfile(p) for p in kept)
    assert ds.test.num_images == 2  # eval splits untouched


def test_missing_images_strict_raises(tmp_path: Path) -> None:
    fx = write_rstp_fixture(tmp_path, missing_images=1)
    with pytest.raises(FileNotFoundError, match="1 of 30") as exc:
        load_dataset("rstpreid", tmp_path, strict=True)
    assert fx.missing[0] in str(exc.value)


def test_all_images_missing_raises(tmp_path: Path) -> None:
    fx = write_icfg_fixture(tmp_path, write_images=False)
    with pytest.raises(FileNotFoundError, match="all 10 image files are missing") as exc:
        load_dataset("icfg-pedes", tmp_path)
    assert fx.missing[0] in str(exc.value)


def test_check_images_off_keeps_everything(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path, write_images=False)
    ds, msgs = _load("cuhk-pedes", tmp_path, check_images=False)
    assert len(ds.train) == 16 and not any("missing" in m for m in msgs)
    assert ds.train[0].image_path == str(fx.image_file(fx.entries[0]))


# --------------------------------------------------------------------------- malformed entries


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("id", DELETE, "'id': missing key"),
        ("id", "7", "'id': expected an integer, got str"),
        ("id", True, "'id': expected an integer, got bool"),
        ("file_path", DELETE, "'file_path': missing key"),
        ("file_path", 12, "'file_path': expected a string"),
        ("captions", DELETE, "'captions': missing key"),
        ("captions", [], "'captions': empty list"),
        ("captions", "a man in red", "'captions': expected a list, got str"),
        ("captions", ["a man in red", 3], "'captions[1]': expected a string, got int"),
        ("captions", ["a man", None], "'captions[1]': expected a string, got NoneType"),
        ("split", "training", "'split': unknown split 'training'"),
        ("split", None, "'split': expected a string"),
    ],
)
def test_malformed_entry_names_file_index_field(
    tmp_path: Path, field: str, value: object, named: str
) -> None:
    fx = write_cuhk_fixture(tmp_path, malformed=(3, field, value))
    with pytest.raises(ValueError) as exc:
        load_dataset("cuhk-pedes", tmp_path)
    msg = str(exc.value)
    assert str(fx.annotation) in msg and "entry 3:" in msg and named in msg


def test_icfg_rejects_val_split(tmp_path: Path) -> None:
    write_icfg_fixture(tmp_path, malformed=(1, "split", "val"))
    with pytest.raises(ValueError, match=r"ICFG-PEDES.json: entry 1: field 'split': unknown split 'val'"):
        load_dataset("icfg-pedes", tmp_path)


def test_rstp_malformed_names_img_path(tmp_path: Path) -> None:
    write_rstp_fixture(tmp_path, malformed=(7, "img_path", DELETE))
    with pytest.raises(ValueError, match=r"data_captions.json: entry 7: field 'img_path': missing key"):
        load_dataset("rstpreid", tmp_path)


def test_non_list_and_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "reid_raw.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_dataset("cuhk-pedes", tmp_path)
    (tmp_path / "reid_raw.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_dataset("cuhk-pedes", tmp_path)
    (tmp_path / "reid_raw.json").write_text(json.dumps([3]))
    with pytest.raises(ValueError, match="entry 0: expected a JSON object"):
        load_dataset("cuhk-pedes", tmp_path)


# --------------------------------------------------------------------------- statistics


def test_count_mismatch_warns_for_fixture(tmp_path: Path) -> None:
    write_cuhk_fixture(tmp_path)
    with pytest.warns(DatasetWarning, match="differ from the official statistics"):
        ds = load_dataset("cuhk-pedes", tmp_path)
    (msg,) = ds.warnings
    assert "train: ids/images/captions 4/8/16 vs official 11003/34054/68098" in msg
    assert "val: ids/images/captions 1/2/4 vs official 1000/3078/6158" in msg


def test_rstp_official_sizes_do_not_warn(tmp_path: Path) -> None:
    write_rstp_fixture(tmp_path, split_ids={"train": 3701, "val": 200, "test": 200}, write_images=False)
    ds, msgs = _load("rstpreid", tmp_path, check_images=False)
    assert msgs == []
    assert (ds.num_train_ids, len(ds.train)) == (3701, 37010)
    assert ds.val is not None and (ds.val.num_ids, ds.val.num_images, ds.val.num_queries) == (200, 1000, 2000)


def test_rstp_early_release_split_warns(tmp_path: Path) -> None:
    write_rstp_fixture(tmp_path, split_ids={"train": 3901, "val": 100, "test": 100}, write_images=False)
    ds, msgs = _load("rstpreid", tmp_path, check_images=False)
    assert len(msgs) == 1 and "early release" in msgs[0] and "3,701/200/200" in msgs[0]
    assert ds.num_train_ids == 3901  # still loads


# --------------------------------------------------------------------------- captions


def test_whitespace_normalised_case_cjk_and_duplicates_kept(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(
        tmp_path, messy_whitespace=True, all_caps=True, cjk=True, duplicate_captions=True
    )
    ds, _ = _load("cuhk-pedes", tmp_path)
    captions = [s.caption for s in ds.train]
    assert fx.quirks["messy_clean"] in captions
    assert fx.quirks["messy"] not in captions
    assert "  " not in fx.quirks["messy_clean"] and fx.quirks["messy_clean"][0] == "A"
    assert fx.quirks["all_caps"] in captions and fx.quirks["all_caps"].isupper()
    assert fx.quirks["cjk"] in captions and "穿着" in fx.quirks["cjk"]
    assert captions.count(fx.quirks["duplicate_caption"]) == 2
    for s in ds.train:
        assert s.caption == s.caption.strip() and "  " not in s.caption and "\t" not in s.caption


def test_empty_caption_skipped_with_count(tmp_path: Path) -> None:
    fx = write_icfg_fixture(tmp_path, empty_caption=True)
    ds, msgs = _load("icfg-pedes", tmp_path)
    assert any("skipped 1 empty captions" in m for m in msgs)
    assert len(ds.train) == len(fx.split_entries("train"))
    assert all(s.caption for s in ds.train)


def test_image_with_only_empty_captions_is_dropped(tmp_path: Path) -> None:
    write_cuhk_fixture(tmp_path, malformed=(2, "captions", ["  ", "\t"]))
    ds, msgs = _load("cuhk-pedes", tmp_path)
    assert any("skipped 2 empty captions" in m and "1 images" in m for m in msgs)
    assert len({s.image_index for s in ds.train}) == 7
    assert sorted({s.image_index for s in ds.train}) == list(range(7))


# --------------------------------------------------------------------------- path quirks


def test_backslash_and_dot_slash_paths(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path, backslash_paths=True)
    assert "\\" in fx.entries[0]["file_path"] and fx.entries[0]["file_path"].startswith("./")
    ds, msgs = _load("cuhk-pedes", tmp_path)
    assert not any("missing" in m for m in msgs)
    _check_train(ds, fx)
    assert "\\" not in ds.train[0].image_path


def test_duplicate_image_path_merges_or_drops(tmp_path: Path) -> None:
    fx = write_cuhk_fixture(tmp_path)
    entries = json.loads(fx.annotation.read_text(encoding="utf-8"))
    same = dict(entries[0], captions=["an extra caption"])
    conflicting = dict(entries[1], id=99)
    entries += [same, conflicting]
    fx.annotation.write_text(json.dumps(entries), encoding="utf-8")
    ds, msgs = _load("cuhk-pedes", tmp_path)
    first = [s for s in ds.train if s.image_index == 0]
    assert [s.caption for s in first] == entries[0]["captions"] + ["an extra caption"]
    assert any("merged" in m for m in msgs)
    assert any("different id or split" in m and "entry 13" in m for m in msgs)
    assert 99 not in {e for e in ds.test.image_pids}
    with pytest.raises(ValueError, match="different id or split"):
        load_dataset("cuhk-pedes", tmp_path, strict=True)


# --------------------------------------------------------------------------- scale


def test_cuhk_scale_loads_fast(tmp_path: Path) -> None:
    """40k entries with an existence check per image should take about a second, not minutes."""
    base = tmp_path / "CUHK-PEDES"
    entries = []
    sources = ["CUHK01", "CUHK03", "Market", "cam_a", "cam_b", "train_query", "test_query"]
    for d in sources:
        (base / "imgs" / d).mkdir(parents=True)
    for i in range(40206):
        pid = i // 3 + 1
        split = "train" if pid <= 11003 else "val" if pid <= 12003 else "test"
        rel = f"{sources[i % 7]}/{i:06d}.{('jpg', 'png', 'bmp')[i % 3]}"
        caps = ["A woman wearing a red coat and black trousers.", "She carries a bag."]
        entries.append(
            {"split": split, "captions": caps, "file_path": rel,
             "processed_tokens": [c.split() for c in caps], "id": pid}
        )
        (base / "imgs" / rel).touch()
    (base / "reid_raw.json").write_text(json.dumps(entries), encoding="utf-8")
    start = time.perf_counter()
    ds, _ = _load("cuhk-pedes", tmp_path)
    elapsed = time.perf_counter() - start
    assert len(ds.train) + ds.test.num_queries + (ds.val.num_queries if ds.val else 0) == 80412
    assert elapsed < 10.0, f"loading 40k entries took {elapsed:.1f}s"
