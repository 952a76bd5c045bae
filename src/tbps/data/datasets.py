"""Readers for the three public text-based person search benchmarks, in their native layouts.

Every reader returns the same plain records (`tbps.data.records`), so training and evaluation
never see a dataset's file format. Users obtain the datasets themselves and point `load_dataset`
at the folder they unpacked; the readers check what they can (missing images, malformed entries,
split sizes against the published statistics) and say exactly what is wrong.

Decisions that every published protocol leaves open, fixed here so results are reproducible:

* Identity remapping: train pids are the distinct original train ids sorted ascending and
  numbered 0..N-1, so the mapping does not depend on the order of entries in the JSON file.
* ``image_index`` numbers the train images in order of first appearance in the file; train
  samples keep the file order (image by image, captions in their listed order).
* Captions: leading/trailing whitespace stripped and every internal run of whitespace (spaces,
  tabs, newlines, other Unicode spaces) collapsed to one space. Case, punctuation and non-ASCII
  characters (e.g. stray CJK) are kept: tokenizers lowercase and normalise on their own.
  Duplicate captions are kept. Captions that are empty after stripping are skipped and counted
  in a warning.
* Image paths: ``\\`` is normalised to ``/``, leading ``./`` and ``/`` are dropped, and the path
  is joined to ``<dataset folder>/imgs``; the records hold absolute paths.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbps.data.records import Dataset, EvalSplit, TrainSample
from tbps.registry import Registry

__all__ = [
    "DATASETS",
    "DatasetWarning",
    "OFFICIAL_STATS",
    "load_dataset",
    "read_cuhk_pedes",
    "read_icfg_pedes",
    "read_rstpreid",
    "read_synth",
]

Reader = Callable[..., Dataset]

DATASETS: Registry[Reader] = Registry("dataset")

# How many missing image paths a warning or error lists before "...".
_SHOW_PATHS = 5

# (ids, images, captions) per split, from the datasets' papers (see docs/DATASETS.md).
OFFICIAL_STATS: dict[str, dict[str, tuple[int, int, int]]] = {
    "cuhk-pedes": {
        "train": (11003, 34054, 68098),
        "val": (1000, 3078, 6158),
        "test": (1000, 3074, 6156),
    },
    "icfg-pedes": {
        "train": (3102, 34674, 34674),
        "test": (1000, 19848, 19848),
    },
    "rstpreid": {
        "train": (3701, 18505, 37010),
        "val": (200, 1000, 2000),
        "test": (200, 1000, 2000),
    },
}

# Identity counts (train, val, test) of an early RSTPReid release with a wrong split.
_RSTP_EARLY_SPLIT_IDS = (3901, 100, 100)


class DatasetWarning(UserWarning):
    """Something in a dataset is off but loading can go on (also kept in `Dataset.warnings`)."""


@dataclass(frozen=True)
class _Format:
    """What differs between the native layouts: file names, field names, allowed splits."""

    name: str
    folder: str  # conventional folder name, e.g. "CUHK-PEDES"
    annotation_names: tuple[str, ...]
    path_field: str
    splits: tuple[str, ...]
    official: dict[str, tuple[int, int, int]] | None
    raw_release: str | None = None  # a known annotation file without the split field
    early_split_ids: tuple[int, ...] | None = None  # ids per split of a known wrong release
    needs_test: bool = True  # False: a training corpus whose evaluation splits come from elsewhere


_CUHK = _Format(
    name="cuhk-pedes",
    folder="CUHK-PEDES",
    annotation_names=("reid_raw.json", "CUHK-PEDES.json"),
    path_field="file_path",
    splits=("train", "val", "test"),
    official=OFFICIAL_STATS["cuhk-pedes"],
    raw_release="caption_all.json",
)
_ICFG = _Format(
    name="icfg-pedes",
    folder="ICFG-PEDES",
    annotation_names=("ICFG-PEDES.json", "ICFG_PEDES.json"),
    path_field="file_path",
    splits=("train", "test"),
    official=OFFICIAL_STATS["icfg-pedes"],
)
_RSTP = _Format(
    name="rstpreid",
    folder="RSTPReid",
    annotation_names=("data_captions.json",),
    path_field="img_path",
    splits=("train", "val", "test"),
    official=OFFICIAL_STATS["rstpreid"],
    early_split_ids=_RSTP_EARLY_SPLIT_IDS,
)
_SYNTH = _Format(
    name="synth",
    folder="synth",
    annotation_names=("reid_raw.json", "CUHK-PEDES.json"),
    path_field="file_path",
    splits=("train", "val", "test"),
    official=None,
    raw_release="caption_all.json",
)


@dataclass
class _Entry:
    """One validated annotation entry: an image, its id, split and raw captions."""

    index: int  # position in the JSON list, for messages
    pid: int
    rel_path: str
    split: str
    captions: list[str]


def load_dataset(
    name: str, root: str | Path, *, check_images: bool = True, strict: bool = False,
    allow_outside_root: bool = False,
) -> Dataset:
    """Read dataset `name` from `root` in its native layout; the one entry point for all data.

    `check_images` verifies every image file exists (without opening it); missing ones are
    dropped with a warning, or raise `FileNotFoundError` when all are missing or `strict` is set.
    An identity in two splits is a warning, an error with `strict`. An image path leading outside
    the dataset's `imgs/` is an error, a warning with `allow_outside_root`.
    """
    reader = DATASETS.get(name)
    return reader(root, check_images=check_images, strict=strict, allow_outside_root=allow_outside_root)


@DATASETS.register("cuhk-pedes")
def read_cuhk_pedes(
    root: str | Path, *, check_images: bool = True, strict: bool = False, allow_outside_root: bool = False
) -> Dataset:
    """CUHK-PEDES: `reid_raw.json` (or `CUHK-PEDES.json`) + `imgs/`; ids are 1-based."""
    return _read(_CUHK, root, check_images=check_images, strict=strict, allow_outside_root=allow_outside_root)


@DATASETS.register("icfg-pedes")
def read_icfg_pedes(
    root: str | Path, *, check_images: bool = True, strict: bool = False, allow_outside_root: bool = False
) -> Dataset:
    """ICFG-PEDES: `ICFG-PEDES.json` (or `ICFG_PEDES.json`) + `imgs/`; train/test only."""
    return _read(_ICFG, root, check_images=check_images, strict=strict, allow_outside_root=allow_outside_root)


@DATASETS.register("rstpreid")
def read_rstpreid(
    root: str | Path, *, check_images: bool = True, strict: bool = False, allow_outside_root: bool = False
) -> Dataset:
    """RSTPReid: `data_captions.json` (entries use `img_path`) + flat `imgs/`."""
    return _read(_RSTP, root, check_images=check_images, strict=strict, allow_outside_root=allow_outside_root)


_SYNTH_PRETRAIN = _Format(
    name="synth-pretrain",
    folder="synth-pretrain",
    annotation_names=("reid_raw.json",),
    path_field="file_path",
    splits=("train", "val", "test"),
    official=None,
    needs_test=False,
)


@DATASETS.register("synth-pretrain")
def read_synth_pretrain(root: str | Path, *, check_images: bool = True, strict: bool = False,
                        allow_outside_root: bool = False) -> Dataset:
    """The pretraining corpus (`tbps synth --preset pretrain`): a train split only, every image its own id;
    pretraining validates on a benchmark's split instead (`data.eval_root`)."""
    return _read(_SYNTH_PRETRAIN, root, check_images=check_images, strict=strict,
                 allow_outside_root=allow_outside_root)


@DATASETS.register("synth")
def read_synth(root: str | Path, *, check_images: bool = True, strict: bool = False,
               allow_outside_root: bool = False) -> Dataset:
    """The embedded procedural benchmark, written in the CUHK-PEDES layout (no official stats)."""
    return _read(_SYNTH, root, check_images=check_images, strict=strict, allow_outside_root=allow_outside_root)


# --------------------------------------------------------------------------- locating files


def _locate(fmt: _Format, root: str | Path) -> Path:
    """Find the annotation file under `root`, `root/<folder>`, or `root` itself if it is the file."""
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise FileNotFoundError(f"{fmt.name}: dataset root {str(root_path)!r} does not exist")
    root_path = root_path.resolve()
    if root_path.is_file():
        if root_path.name in fmt.annotation_names:
            return root_path
        raise FileNotFoundError(
            f"{fmt.name}: {str(root_path)!r} is a file, not a dataset folder; expected a folder "
            f"holding one of {', '.join(fmt.annotation_names)}"
        )
    folders = [root_path, root_path / fmt.folder]
    tried: list[Path] = []
    for folder in folders:
        for fname in fmt.annotation_names:
            candidate = folder / fname
            tried.append(candidate)
            if candidate.is_file():
                return candidate
    if fmt.raw_release is not None:
        for folder in folders:
            raw = folder / fmt.raw_release
            if raw.is_file():
                raise FileNotFoundError(
                    f"{fmt.name}: found {str(raw)!r}, the raw release, which has no 'split' "
                    f"field; the train/val/test split file is needed: put "
                    f"{' or '.join(fmt.annotation_names)} next to it (tried: "
                    f"{', '.join(str(p) for p in tried)})"
                )
    raise FileNotFoundError(
        f"{fmt.name}: no annotation file found; tried: {', '.join(str(p) for p in tried)}"
    )


# --------------------------------------------------------------------------- parsing


def _malformed(ann: Path, index: int, field: str, problem: str) -> ValueError:
    return ValueError(f"{ann}: entry {index}: field {field!r}: {problem}")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _normalise_rel_path(path: str) -> str:
    """Make an annotation path relative to `imgs/` with forward slashes."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def _escapes_root(rel: str) -> bool:
    """Whether a relative image path climbs out of `imgs/` (`../x`, `a/../../x`)."""
    return os.path.normpath(rel).split("/")[0] == ".."


def _parse_entries(fmt: _Format, ann: Path, data: Any, allow_outside_root: bool = False,
                   notes: list[str] | None = None) -> list[_Entry]:
    """Validate every entry's fields; any problem is a ValueError naming file, index and field.

    An image path leading outside `imgs/` is refused unless `allow_outside_root`, then noted."""
    if not isinstance(data, list):
        raise ValueError(f"{ann}: expected a JSON list of entries, got {_type_name(data)}")
    allowed = set(fmt.splits)
    entries: list[_Entry] = []
    outside: list[str] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{ann}: entry {i}: expected a JSON object, got {_type_name(item)}")
        for key in ("id", fmt.path_field, "captions", "split"):
            if key not in item:
                hint = ""
                if key == "split" and fmt.raw_release is not None:
                    hint = (
                        f" ({fmt.raw_release} from the raw release has no split; use "
                        f"{' or '.join(fmt.annotation_names)})"
                    )
                raise _malformed(ann, i, key, f"missing key{hint}")
        pid = item["id"]
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise _malformed(ann, i, "id", f"expected an integer, got {_type_name(pid)}")
        path = item[fmt.path_field]
        if not isinstance(path, str):
            raise _malformed(ann, i, fmt.path_field, f"expected a string, got {_type_name(path)}")
        rel = _normalise_rel_path(path.strip())
        if not rel:
            raise _malformed(ann, i, fmt.path_field, "empty path")
        if _escapes_root(rel):
            if not allow_outside_root:
                raise _malformed(ann, i, fmt.path_field, f"{path!r} leads outside the dataset's imgs/ folder; "
                                 "set data.allow_outside_root=true to read it anyway")
            outside.append(f"entry {i}: {path!r}")
        split = item["split"]
        if not isinstance(split, str):
            raise _malformed(ann, i, "split", f"expected a string, got {_type_name(split)}")
        if split not in allowed:
            raise _malformed(
                ann, i, "split", f"unknown split {split!r}; expected one of {', '.join(fmt.splits)}"
            )
        caps = item["captions"]
        if not isinstance(caps, list):
            raise _malformed(ann, i, "captions", f"expected a list, got {_type_name(caps)}")
        if not caps:
            raise _malformed(ann, i, "captions", "empty list")
        for j, cap in enumerate(caps):
            if not isinstance(cap, str):
                raise _malformed(
                    ann, i, f"captions[{j}]", f"expected a string, got {_type_name(cap)}"
                )
        entries.append(_Entry(index=i, pid=pid, rel_path=rel, split=split, captions=list(caps)))
    if outside and notes is not None:
        notes.append(f"{ann}: {len(outside)} image paths lead outside {ann.parent / 'imgs'} (read because "
                     f"allow_outside_root is set): {'; '.join(outside[:_SHOW_PATHS])}"
                     + (" ..." if len(outside) > _SHOW_PATHS else ""))
    return entries


def _check_split_identities(entries: list[_Entry], ann: Path, strict: bool, notes: list[str]) -> None:
    """The same identity in two splits leaks test people into training: a warning, an error if strict."""
    by_split: dict[str, set[int]] = {}
    for e in entries:
        by_split.setdefault(e.split, set()).add(e.pid)
    names = sorted(by_split)
    overlaps = []
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            shared = sorted(by_split[a] & by_split[b])
            if shared:
                overlaps.append(f"{len(shared)} in {a} and {b} (e.g. {', '.join(map(str, shared[:_SHOW_PATHS]))}"
                                + (" ..." if len(shared) > _SHOW_PATHS else "") + ")")
    if not overlaps:
        return
    msg = (f"{ann}: identities appear in more than one split: {'; '.join(overlaps)}; splits should hold "
           "disjoint people, or results are inflated")
    if strict:
        raise ValueError(msg + " (strict)")
    notes.append(msg)


def _merge_duplicate_paths(
    entries: list[_Entry], ann: Path, strict: bool, notes: list[str]
) -> list[_Entry]:
    """One entry per image: same path + same id/split merges captions; a conflict drops the later."""
    by_path: dict[str, _Entry] = {}
    merged = 0
    conflicts: list[str] = []
    out: list[_Entry] = []
    for e in entries:
        first = by_path.get(e.rel_path)
        if first is None:
            by_path[e.rel_path] = e
            out.append(e)
        elif first.pid == e.pid and first.split == e.split:
            first.captions.extend(e.captions)
            merged += 1
        else:
            conflicts.append(
                f"entry {e.index} ({e.rel_path!r}, id {e.pid}, {e.split}) vs entry "
                f"{first.index} (id {first.pid}, {first.split})"
            )
    if conflicts:
        msg = (
            f"{ann}: {len(conflicts)} entries repeat an image path with a different id or split; "
            f"kept the first, dropped the later: {'; '.join(conflicts[:_SHOW_PATHS])}"
            + (" ..." if len(conflicts) > _SHOW_PATHS else "")
        )
        if strict:
            raise ValueError(msg)
        notes.append(msg)
    if merged:
        notes.append(
            f"{ann}: {merged} entries repeat an image path with the same id and split; "
            f"their captions were merged into the first entry"
        )
    return out


# --------------------------------------------------------------------------- image checks


def _check_images(
    entries: list[_Entry],
    img_dir: str,
    fmt: _Format,
    strict: bool,
    notes: list[str],
) -> list[_Entry]:
    """Drop entries whose image file is missing; error if all are missing or in strict mode."""
    exists = os.path.exists
    present: list[_Entry] = []
    missing: list[str] = []
    for e in entries:
        if exists(os.path.join(img_dir, e.rel_path)):
            present.append(e)
        else:
            missing.append(e.rel_path)
    if not missing:
        return entries
    shown = ", ".join(missing[:_SHOW_PATHS]) + (" ..." if len(missing) > _SHOW_PATHS else "")
    summary = f"{len(missing)} of {len(entries)} image files are missing under {img_dir}: {shown}"
    if not present:
        raise FileNotFoundError(
            f"{fmt.name}: all {len(entries)} image files are missing under {img_dir} "
            f"(first: {shown}); is the root right and are the images unpacked into imgs/?"
        )
    if strict:
        raise FileNotFoundError(f"{fmt.name}: {summary} (strict=True)")
    notes.append(f"{fmt.name}: {summary}; their entries were dropped")
    return present


# --------------------------------------------------------------------------- building records


def _clean_caption(caption: str) -> str:
    """Strip and collapse whitespace runs to one space; everything else is kept as written."""
    return " ".join(caption.split())


def _build(
    fmt: _Format, entries: list[_Entry], img_dir: str, notes: list[str]
) -> tuple[list[TrainSample], int, dict[str, EvalSplit], dict[str, tuple[int, int, int]]]:
    """Turn validated entries into train samples and eval splits; also return loaded counts."""
    empty = 0
    emptied_images = 0
    per_split: dict[str, list[tuple[_Entry, str, list[str]]]] = {s: [] for s in fmt.splits}
    for e in entries:
        caps = []
        for c in e.captions:
            cleaned = _clean_caption(c)
            if cleaned:
                caps.append(cleaned)
            else:
                empty += 1
        if not caps:
            emptied_images += 1
            continue
        abs_path = os.path.normpath(os.path.join(img_dir, e.rel_path))
        per_split[e.split].append((e, abs_path, caps))
    if empty:
        extra = (
            f"; {emptied_images} images with no caption left were dropped" if emptied_images else ""
        )
        notes.append(f"{fmt.name}: skipped {empty} empty captions (after stripping whitespace){extra}")

    counts: dict[str, tuple[int, int, int]] = {}
    train_items = per_split["train"]
    remap = {pid: k for k, pid in enumerate(sorted({e.pid for e, _, _ in train_items}))}
    train: list[TrainSample] = []
    for image_index, (e, abs_path, caps) in enumerate(train_items):
        label = remap[e.pid]
        for cap in caps:
            train.append(TrainSample(image_path=abs_path, caption=cap, pid=label, image_index=image_index))
    counts["train"] = (len(remap), len(train_items), len(train))

    evals: dict[str, EvalSplit] = {}
    for split in fmt.splits:
        if split == "train":
            continue
        items = per_split[split]
        es = EvalSplit(image_paths=[], image_pids=[], captions=[], caption_pids=[], caption_image_index=[])
        for gi, (e, abs_path, caps) in enumerate(items):
            es.image_paths.append(abs_path)
            es.image_pids.append(e.pid)
            for cap in caps:
                es.captions.append(cap)
                es.caption_pids.append(e.pid)
                es.caption_image_index.append(gi)
        evals[split] = es
        counts[split] = (es.num_ids, es.num_images, es.num_queries)
    return train, len(remap), evals, counts


def _check_stats(
    fmt: _Format,
    entries: list[_Entry],
    counts: dict[str, tuple[int, int, int]],
    notes: list[str],
) -> None:
    """Compare loaded split sizes with the published ones; a mismatch is a warning only.

    `entries` are the annotation's entries (before dropping missing images), used to recognise
    the early RSTPReid release by its identity counts.
    """
    if fmt.official is None:
        return
    if fmt.early_split_ids is not None:
        ids = tuple(len({e.pid for e in entries if e.split == s}) for s in fmt.splits)
        if ids == fmt.early_split_ids:
            official = "/".join(f"{fmt.official[s][0]:,}" for s in fmt.splits)
            notes.append(
                f"{fmt.name}: the annotation has an early release's wrong split "
                f"({'/'.join(f'{n:,}' for n in ids)} ids in {'/'.join(fmt.splits)}); the "
                f"official split is {official}. Results on this file are not comparable with "
                f"published numbers; get the corrected {fmt.annotation_names[0]}"
            )
            return
    diffs = []
    for split, official in fmt.official.items():
        got = counts.get(split, (0, 0, 0))
        if got != official:
            diffs.append(
                f"{split}: ids/images/captions {got[0]}/{got[1]}/{got[2]} "
                f"vs official {official[0]}/{official[1]}/{official[2]}"
            )
    if diffs:
        notes.append(
            f"{fmt.name}: loaded split sizes differ from the official statistics ("
            + "; ".join(diffs)
            + "); fine for a subset or test fixture, but results are not comparable with "
            "published numbers"
        )


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building ~10^5 acyclic objects.

    Full-size annotation files create hundreds of thousands of lists and dicts (the CUHK-PEDES
    `processed_tokens` alone); the collections they trigger about double the load time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read(fmt: _Format, root: str | Path, *, check_images: bool, strict: bool,
          allow_outside_root: bool = False) -> Dataset:
    """The shared reader: locate, then parse and build with the garbage collector paused."""
    ann = _locate(fmt, root)
    with _gc_paused():
        dataset = _read_annotation(fmt, ann, check_images=check_images, strict=strict,
                                   allow_outside_root=allow_outside_root)
    for note in dataset.warnings:
        warnings.warn(note, DatasetWarning, stacklevel=4)
    return dataset


def _read_annotation(fmt: _Format, ann: Path, *, check_images: bool, strict: bool,
                     allow_outside_root: bool = False) -> Dataset:
    """Parse, check images, build records and check statistics; warnings go in the result."""
    base = ann.parent
    img_dir = str(base / "imgs")
    try:
        with open(ann, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ann}: not valid JSON: {exc}") from exc
    notes: list[str] = []
    entries = _parse_entries(fmt, ann, data, allow_outside_root, notes)
    entries = _merge_duplicate_paths(entries, ann, strict, notes)
    _check_split_identities(entries, ann, strict, notes)
    annotated = entries
    if check_images and entries:
        entries = _check_images(entries, img_dir, fmt, strict, notes)
    train, num_ids, evals, counts = _build(fmt, entries, img_dir, notes)
    if not evals["test"].image_paths and fmt.needs_test:
        raise ValueError(f"{ann}: no usable entries with split 'test'")
    if not train:
        notes.append(f"{fmt.name}: no usable train entries in {ann}")
    val = evals.get("val")
    if val is not None and not val.image_paths:
        if fmt.needs_test:  # a training corpus has no evaluation splits by design
            notes.append(f"{fmt.name}: no usable val entries in {ann}; val is None")
        val = None
    _check_stats(fmt, annotated, counts, notes)
    return Dataset(
        name=fmt.name,
        root=base,
        train=train,
        num_train_ids=num_ids,
        val=val,
        test=evals["test"],
        warnings=notes,
    )
