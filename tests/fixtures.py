"""Writers of tiny datasets in the exact native layouts of CUHK-PEDES, ICFG-PEDES and RSTPReid.

Tests never see the real datasets (access is by request), so these writers reproduce their file
layouts and JSON shapes (see docs/DATASETS.md) with real small images written by PIL, plus
switches that inject the quirks the readers must survive: missing images, a malformed entry,
duplicate captions, ALL-CAPS, messy whitespace, empty captions, stray CJK, backslash paths.

Usage from any test file: ``from fixtures import write_cuhk_fixture``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "DELETE",
    "Fixture",
    "write_cuhk_fixture",
    "write_icfg_fixture",
    "write_rstp_fixture",
]


class _Delete:
    """Sentinel type: `malformed=(i, key, DELETE)` removes `key` from entry `i`."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


@dataclass
class Fixture:
    """What a writer produced, so tests can compare the reader's output with the truth."""

    root: Path  # the folder to pass to load_dataset
    base: Path  # the dataset folder itself (holds the JSON and imgs/); == root unless subfolder
    annotation: Path
    entries: list[dict[str, Any]]  # exactly as written to the JSON, in file order
    missing: list[str] = field(default_factory=list)  # path fields whose image was not written
    quirks: dict[str, Any] = field(default_factory=dict)  # details of injected quirks

    @property
    def path_field(self) -> str:
        return "img_path" if "img_path" in self.entries[0] else "file_path"

    def image_file(self, entry: dict[str, Any]) -> Path:
        """Absolute path of an entry's image as the readers should resolve it."""
        rel = entry[self.path_field].replace("\\", "/")
        while rel.startswith("./"):
            rel = rel[2:]
        return (self.base / "imgs" / rel).resolve()

    def split_entries(self, split: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e.get("split") == split]

    def counts(self, split: str) -> tuple[int, int, int]:
        """(ids, images, captions) of a split as written (before any reader-side dropping)."""
        es = self.split_entries(split)
        return len({e["id"] for e in es}), len(es), sum(len(e["captions"]) for e in es)


# --------------------------------------------------------------------------- captions

_GENDERS = ["man", "woman", "young man", "young woman", "boy", "girl", "old man", "old woman"]
_COLORS = ["red", "blue", "black", "white", "grey", "green", "yellow", "pink", "brown", "purple"]
_UPPER = ["t-shirt", "jacket", "coat", "shirt", "sweater", "hoodie", "blouse", "vest"]
_LOWER = ["jeans", "shorts", "trousers", "skirt", "leggings", "pants"]
_SHOES = ["sneakers", "boots", "sandals", "shoes", "slippers"]
_BAGS = ["a backpack", "a handbag", "nothing", "a shoulder bag", "a phone", "an umbrella"]


def _caption(rng: random.Random) -> str:
    who = rng.choice(_GENDERS)
    article = "An" if who[0] in "aeiou" else "A"
    return (
        f"{article} {who} wearing a {rng.choice(_COLORS)} {rng.choice(_UPPER)}, "
        f"{rng.choice(_COLORS)} {rng.choice(_LOWER)} and {rng.choice(_COLORS)} "
        f"{rng.choice(_SHOES)}, carrying {rng.choice(_BAGS)}."
    )


def _unique_captions(rng: random.Random, n: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        c = _caption(rng)
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


# --------------------------------------------------------------------------- images

_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def _write_image(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), color).save(path, format=_PIL_FORMATS[path.suffix.lower()])


# --------------------------------------------------------------------------- the shared writer


def _default_splits(n_ids: int, splits: tuple[str, ...]) -> dict[str, int]:
    """All but one id per eval split go to train."""
    n_eval = len(splits) - 1
    if n_ids < n_eval + 1:
        raise ValueError(f"need at least {n_eval + 1} ids for splits {splits}")
    out = {s: 1 for s in splits if s != "train"}
    out["train"] = n_ids - n_eval
    return out


def _write(
    root: str | Path,
    *,
    folder: str,
    annotation_name: str,
    path_field: str,
    splits: tuple[str, ...],
    first_id: int,
    make_path: Any,  # (pid, k, split, entry_number) -> relative path
    n_ids: int,
    split_ids: dict[str, int] | None,
    images_per_id: int,
    captions_per_image: int,
    extra_fields: Any,  # (captions) -> dict of extra JSON fields
    subfolder: bool,
    include_split: bool,
    missing_images: int,
    write_images: bool,
    malformed: tuple[int, str, Any] | None,
    duplicate_captions: bool,
    all_caps: bool,
    messy_whitespace: bool,
    empty_caption: bool,
    cjk: bool,
    backslash_paths: bool,
    shuffle: bool,
    seed: int,
) -> Fixture:
    rng = random.Random(seed)
    root = Path(root)
    base = root / folder if subfolder else root
    base.mkdir(parents=True, exist_ok=True)
    counts = split_ids or _default_splits(n_ids, splits)
    order = [s for s in splits if s in counts] + [s for s in counts if s not in splits]

    n_images = sum(counts.values()) * images_per_id
    all_caps_list = _unique_captions(rng, n_images * captions_per_image)
    entries: list[dict[str, Any]] = []
    pid = first_id
    for split in order:
        for _ in range(counts[split]):
            for k in range(images_per_id):
                start = len(entries) * captions_per_image
                caps = all_caps_list[start : start + captions_per_image]
                entry: dict[str, Any] = {
                    "id": pid,
                    path_field: make_path(pid, k, split, len(entries)),
                    "captions": caps,
                }
                if include_split:
                    entry["split"] = split
                entry.update(extra_fields(caps))
                entries.append(entry)
            pid += 1

    # each quirk touches a different entry so they can be combined freely
    quirks: dict[str, Any] = {}
    if messy_whitespace:
        words = entries[0]["captions"][0].split(" ")
        messy = "  " + "  ".join(words[:3]) + " \t " + " ".join(words[3:]) + " \n"
        entries[0]["captions"][0] = messy
        quirks["messy"] = messy
        quirks["messy_clean"] = " ".join(messy.split())
    if all_caps:
        entries[1]["captions"][0] = entries[1]["captions"][0].upper()
        quirks["all_caps"] = entries[1]["captions"][0]
    if cjk:
        entries[2]["captions"][0] = entries[2]["captions"][0] + " 穿着 的"
        quirks["cjk"] = entries[2]["captions"][0]
    if duplicate_captions:
        # an exact duplicate across identities: entry 3's first caption reused by the first
        # later entry of another identity
        src = 3
        dst = next(i for i in range(src + 1, len(entries)) if entries[i]["id"] != entries[src]["id"])
        entries[dst]["captions"][0] = entries[src]["captions"][0]
        quirks["duplicate_caption"] = entries[src]["captions"][0]
        quirks["duplicate_entries"] = (src, dst)
    if empty_caption:
        entries[0]["captions"].append("   ")
        quirks["empty_captions"] = 1
    if backslash_paths:
        for e in entries[::2]:
            e[path_field] = "./" + e[path_field].replace("/", "\\")
        quirks["backslash"] = True

    # images: write each one except those of the last `missing_images` train entries (so the
    # quirk entries at the front and the eval splits stay), or none at all
    train_idx = [i for i, e in enumerate(entries) if e.get("split", "train") == "train"]
    if not write_images:
        skip = set(range(len(entries)))
    else:
        skip = set(train_idx[len(train_idx) - missing_images :]) if missing_images else set()
    missing: list[str] = []
    for i, e in enumerate(entries):
        if i in skip:
            missing.append(e[path_field])
            continue
        rel = e[path_field].replace("\\", "/")
        while rel.startswith("./"):
            rel = rel[2:]
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        _write_image(base / "imgs" / rel, color)

    if shuffle:
        rng.shuffle(entries)
    if malformed is not None:
        index, key, value = malformed
        if value is DELETE:
            del entries[index][key]
        else:
            entries[index][key] = value
        quirks["malformed"] = (index, key)

    annotation = base / annotation_name
    with open(annotation, "w", encoding="utf-8") as f:
        json.dump(entries, f, ensure_ascii=False)
    return Fixture(
        root=root, base=base, annotation=annotation, entries=entries, missing=missing, quirks=quirks
    )


# --------------------------------------------------------------------------- public writers

_CUHK_SOURCES = ["CUHK01", "CUHK03", "Market", "cam_a", "cam_b", "train_query", "test_query"]
_CUHK_EXTS = [".jpg", ".png", ".bmp"]


def write_cuhk_fixture(
    root: str | Path,
    *,
    n_ids: int = 6,
    split_ids: dict[str, int] | None = None,
    images_per_id: int = 2,
    captions_per_image: int = 2,
    annotation_name: str = "reid_raw.json",
    subfolder: bool = False,
    include_split: bool = True,
    missing_images: int = 0,
    write_images: bool = True,
    malformed: tuple[int, str, Any] | None = None,
    duplicate_captions: bool = False,
    all_caps: bool = False,
    messy_whitespace: bool = False,
    empty_caption: bool = False,
    cjk: bool = False,
    backslash_paths: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> Fixture:
    """CUHK-PEDES layout: `reid_raw.json` + `imgs/<source>/<file>` with mixed extensions, 1-based ids.

    Default: 6 ids (4 train, 1 val, 1 test), 2 images per id, 2 captions per image;
    `split_ids` (ids per split) overrides `n_ids`. Quirks touch distinct entries: messy
    whitespace entry 0, ALL-CAPS entry 1, CJK entry 2, duplicate caption entry 3 -> next other id;
    an empty caption is appended to entry 0; missing images are the last train entries'. With
    `subfolder=True` the data go to `root/CUHK-PEDES/`. `include_split=False` with
    `annotation_name="caption_all.json"` mimics the raw release.
    """

    def make_path(pid: int, k: int, split: str, n: int) -> str:
        src = _CUHK_SOURCES[n % len(_CUHK_SOURCES)]
        ext = _CUHK_EXTS[n % len(_CUHK_EXTS)]
        return f"{src}/{pid:04d}{k + 1:03d}{ext}"

    def extra(caps: list[str]) -> dict[str, Any]:
        return {"processed_tokens": [c.lower().replace(",", "").replace(".", "").split() for c in caps]}

    return _write(
        root,
        folder="CUHK-PEDES",
        annotation_name=annotation_name,
        path_field="file_path",
        splits=("train", "val", "test"),
        first_id=1,
        make_path=make_path,
        n_ids=n_ids,
        split_ids=split_ids,
        images_per_id=images_per_id,
        captions_per_image=captions_per_image,
        extra_fields=extra,
        subfolder=subfolder,
        include_split=include_split,
        missing_images=missing_images,
        write_images=write_images,
        malformed=malformed,
        duplicate_captions=duplicate_captions,
        all_caps=all_caps,
        messy_whitespace=messy_whitespace,
        empty_caption=empty_caption,
        cjk=cjk,
        backslash_paths=backslash_paths,
        shuffle=shuffle,
        seed=seed,
    )


def write_icfg_fixture(
    root: str | Path,
    *,
    n_ids: int = 5,
    split_ids: dict[str, int] | None = None,
    images_per_id: int = 2,
    captions_per_image: int = 1,
    annotation_name: str = "ICFG-PEDES.json",
    subfolder: bool = False,
    missing_images: int = 0,
    write_images: bool = True,
    malformed: tuple[int, str, Any] | None = None,
    duplicate_captions: bool = False,
    all_caps: bool = False,
    messy_whitespace: bool = False,
    empty_caption: bool = False,
    cjk: bool = False,
    backslash_paths: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> Fixture:
    """ICFG-PEDES layout: `ICFG-PEDES.json` + `imgs/{train,test}/<id>/<file>.jpg`, 0-based ids.

    Default: 5 ids (4 train, 1 test), 2 images per id, 1 caption per image; no val split.
    """

    def make_path(pid: int, k: int, split: str, n: int) -> str:
        return f"{split}/{pid:04d}/{pid:04d}_{k:03d}_01_0303morning_{n:04d}_0.jpg"

    def extra(caps: list[str]) -> dict[str, Any]:
        return {"processed_tokens": [c.lower().split() for c in caps]}

    return _write(
        root,
        folder="ICFG-PEDES",
        annotation_name=annotation_name,
        path_field="file_path",
        splits=("train", "test"),
        first_id=0,
        make_path=make_path,
        n_ids=n_ids,
        split_ids=split_ids,
        images_per_id=images_per_id,
        captions_per_image=captions_per_image,
        extra_fields=extra,
        subfolder=subfolder,
        include_split=True,
        missing_images=missing_images,
        write_images=write_images,
        malformed=malformed,
        duplicate_captions=duplicate_captions,
        all_caps=all_caps,
        messy_whitespace=messy_whitespace,
        empty_caption=empty_caption,
        cjk=cjk,
        backslash_paths=backslash_paths,
        shuffle=shuffle,
        seed=seed,
    )


def write_rstp_fixture(
    root: str | Path,
    *,
    n_ids: int = 6,
    split_ids: dict[str, int] | None = None,
    images_per_id: int = 5,
    captions_per_image: int = 2,
    annotation_name: str = "data_captions.json",
    subfolder: bool = False,
    missing_images: int = 0,
    write_images: bool = True,
    malformed: tuple[int, str, Any] | None = None,
    duplicate_captions: bool = False,
    all_caps: bool = False,
    messy_whitespace: bool = False,
    empty_caption: bool = False,
    cjk: bool = False,
    backslash_paths: bool = False,
    shuffle: bool = False,
    seed: int = 0,
) -> Fixture:
    """RSTPReid layout: `data_captions.json` (entries use `img_path`) + flat `imgs/<name>.jpg`.

    Default: 6 ids (4 train, 1 val, 1 test), 5 images per id, 2 captions per image. The real
    sizes (3,701/200/200 ids, or the early 3,901/100/100) can be written with
    `write_images=False` and read with `check_images=False`.
    """

    def make_path(pid: int, k: int, split: str, n: int) -> str:
        return f"{pid:04d}_c{k % 6 + 1}_{n:04d}.jpg"

    def extra(caps: list[str]) -> dict[str, Any]:
        return {}

    return _write(
        root,
        folder="RSTPReid",
        annotation_name=annotation_name,
        path_field="img_path",
        splits=("train", "val", "test"),
        first_id=0,
        make_path=make_path,
        n_ids=n_ids,
        split_ids=split_ids,
        images_per_id=images_per_id,
        captions_per_image=captions_per_image,
        extra_fields=extra,
        subfolder=subfolder,
        include_split=True,
        missing_images=missing_images,
        write_images=write_images,
        malformed=malformed,
        duplicate_captions=duplicate_captions,
        all_caps=all_caps,
        messy_whitespace=messy_whitespace,
        empty_caption=empty_caption,
        cjk=cjk,
        backslash_paths=backslash_paths,
        shuffle=shuffle,
        seed=seed,
    )


def render_tiny_benchmark(out: Path) -> Path:
    """`tbps synth --preset tiny` into `out` (a second or so), for tests that train through the CLI."""
    from tbps.cli import main

    assert main(["synth", "--out", str(out), "--preset", "tiny", "--seed", "0", "--quiet"]) == 0
    return out


def cli_train_args(config: str, data: Path, out: Path, overrides: list[str]) -> list[str]:
    """Arguments for `tbps train --config CONFIG` on `data` into `out` with `--set` overrides."""
    args = ["train", "--config", config, "--out", str(out), "--quiet", "--set", f"data.root={data}"]
    for s in overrides:
        args += ["--set", s]
    return args
