"""Render the benchmark into a CUHK-PEDES folder (reid_raw.json + imgs/), deterministically.

Determinism: identities are drawn in the parent from ``default_rng([seed, 0x5EED])``; everything
about image ``k`` of identity ``pid`` (viewpoint, pose, clutter, captions) comes from
``default_rng([seed, pid, k])`` and ``default_rng([seed, pid, k, 1])``. The number of worker
processes therefore changes nothing in the output.

Crash safety: images and JSON are written into a hidden temporary folder inside ``out_dir`` and
moved into place at the end; ``reid_raw.json`` is replaced last, so its presence means the folder
is complete.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .attributes import ATTRIBUTE_SLOTS, COLOURS, HAIR_COLOURS, sample_split_identities
from .captions import make_captions, tokenize
from .presets import NAMESPACE_STRIDE, PRESETS, Difficulty, Preset
from .render import render_image, sample_image_params
from .web_captions import make_style_shift_caption, make_web_captions

SYNTH_VERSION = "1.0"
SPLITS = ("train", "val", "test")
IMG_SUBDIR = "synth"
_TMP_PREFIX = ".tmp-synth-"
STYLE_SHIFT_DIR = "style_shift"  # the test split's images with held-out-style captions (web_captions.py)
_VIEW_WEIGHTS = {"front": 0.4, "back": 0.35, "side": 0.25}


def _image_plan(seed: int, pid: int, preset: Preset) -> list[str]:
    """Views of an identity's images: every view once (if there are >= 3 images), then random."""
    rng = np.random.default_rng([seed, pid, 1_000_000])
    lo, hi = preset.images_per_id
    n = int(rng.integers(lo, hi + 1))
    views = ["front", "back", "side"]
    rng.shuffle(views)
    keys = list(_VIEW_WEIGHTS)
    w = np.array([_VIEW_WEIGHTS[k] for k in keys])
    extra = [keys[int(i)] for i in rng.choice(len(keys), size=max(n - 3, 0), p=w / w.sum())]
    plan = (views + extra)[:n]
    rng.shuffle(plan)
    return plan


def _render_identity(task: tuple[int, int, dict[str, Any], Preset, str]) -> list[dict[str, Any]]:
    """Worker: render and save all images of one identity; return their records (no pixels)."""
    seed, pid, ident, preset, img_dir = task
    diff = preset.difficulty
    out = []
    for k, view in enumerate(_image_plan(seed, pid, preset)):
        rng = np.random.default_rng([seed, pid, k])
        params = sample_image_params(ident, view, rng, diff)
        img = render_image(ident, params, preset.height, preset.width, rng, diff)
        name = f"{pid:05d}_{k:02d}.png"
        img.save(os.path.join(img_dir, name), format="PNG", compress_level=6)
        crng = np.random.default_rng([seed, pid, k, 1])
        rec: dict[str, Any] = {"name": name, "params": params}
        if preset.caption_style == "web-v2":
            n = int(crng.integers(1, preset.captions_per_image + 1))
            rec["captions"], rec["noise"] = make_web_captions(ident, params, crng, n)
            rec["terse"], rec["mentions"] = [False] * n, []
        else:
            rec["captions"], rec["terse"], rec["mentions"] = make_captions(
                ident, params, crng, preset.captions_per_image, diff.terse_frac, diff.mention_prob)
            # the held-out caption style, from its own stream (the benchmark captions stay as they were)
            rec["style_shift"] = make_style_shift_caption(ident, params, np.random.default_rng([seed, pid, k, 2]))
        out.append(rec)
    return out


def _draw_identities(seed: int, preset: Preset) -> list[dict[str, Any]]:
    """All identities with global 1-based ids, split labels and variant links (by id)."""
    # a namespace other than 0 (the pretraining corpus) has its own seed stream and id range
    rng = np.random.default_rng([seed, 0x5EED] + ([preset.namespace] if preset.namespace else []))
    diff = preset.difficulty
    out: list[dict[str, Any]] = []
    for split, n in zip(SPLITS, (preset.n_train, preset.n_val, preset.n_test)):
        first = preset.namespace * NAMESPACE_STRIDE + len(out) + 1
        for i, ident in enumerate(sample_split_identities(rng, n, diff.variant_frac, diff.max_variants)):
            vo = ident.pop("variant_of")
            ident["id"] = first + i
            ident["split"] = split
            ident["variant_of"] = None if vo is None else first + vo
            out.append(ident)
    return out


def _clean_stale_tmp(out_dir: Path) -> None:
    """Remove temp folders of killed runs (their process no longer exists)."""
    for p in out_dir.glob(_TMP_PREFIX + "*"):
        try:
            pid = int(p.name[len(_TMP_PREFIX):].split("-")[0])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


def _write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=True)
        f.write("\n")


@contextlib.contextmanager
def _results(tasks: list[tuple], workers: int) -> Iterator[Iterator[list[dict[str, Any]]]]:
    """Per-identity results in task order, rendered inline or by a process pool.

    The pool is started here, before the caller opens its progress bar (no extra threads exist
    in the parent when it forks).
    """
    if workers <= 1 or len(tasks) <= 1:
        yield (_render_identity(t) for t in tasks)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(min(workers, len(tasks))) as pool:
        yield pool.imap(_render_identity, tasks, chunksize=4)


def resolve_preset(preset: str | Preset, height: int | None = None, width: int | None = None) -> Preset:
    """A preset by name (or as given), at the requested crop size."""
    if isinstance(preset, Preset):
        p = preset
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown synth preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
    p = p.with_size(height, width)
    if not (32 <= p.height <= 1024 and 16 <= p.width <= 1024):
        raise ValueError(f"synth image size {p.height}x{p.width} (HxW) is out of range (32..1024 x 16..1024)")
    return p


def is_current(out_dir: str | Path, preset: str | Preset = "small", seed: int = 0, height: int | None = None,
               width: int | None = None) -> bool:
    """Whether out_dir holds a finished render of exactly this preset, seed and size.

    False for a missing or unfinished folder, and for one rendered by another version or with
    other difficulty knobs (a preset recalibrated since), so callers never reuse stale data.
    """
    meta_file = Path(out_dir) / "meta.json"
    if not (Path(out_dir) / "reid_raw.json").is_file() or not meta_file.is_file():
        return False
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return False
    p = resolve_preset(preset, height, width)
    return (meta.get("version") == SYNTH_VERSION and meta.get("seed") == seed
            and meta.get("preset_config") == p.to_dict())


def generate(out_dir: str | Path, preset: str | Preset = "small", seed: int = 0, height: int | None = None,
             width: int | None = None, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Render the benchmark into out_dir; returns a summary dict (num ids/images/captions per split, seconds).

    Writes ``reid_raw.json`` (CUHK-PEDES layout), ``imgs/synth/*.png``, ``attributes.json`` (ground
    truth and per-image visibility, so other captioners can reuse the images) and ``meta.json``.
    The output depends only on (preset, seed, height, width), never on `workers`.
    """
    t0 = time.time()
    p = resolve_preset(preset, height, width)
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    workers = max(1, int(workers))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out)
    tmp = out / f"{_TMP_PREFIX}{os.getpid()}-{int(t0 * 1000) % 10**9}"
    tmp_imgs = tmp / "imgs" / IMG_SUBDIR
    tmp_imgs.mkdir(parents=True)
    try:
        idents = _draw_identities(seed, p)
        tasks = [(seed, it["id"], {"attributes": it["attributes"], "appearance": it["appearance"]}, p, str(tmp_imgs))
                 for it in idents]
        results: list[list[dict[str, Any]]] = []
        with _results(tasks, workers) as it:
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=len(tasks), desc=f"synth[{p.name}]", unit="id")
            for r in it:
                results.append(r)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()

        reid_raw: list[dict[str, Any]] = []
        images: list[dict[str, Any]] = []
        counts = {s: {"ids": 0, "images": 0, "captions": 0, "terse_captions": 0} for s in SPLITS}
        web = p.caption_style == "web-v2"
        noise = {k: 0 for k in ("wrong", "irrelevant", "partial")}
        style_shift: list[dict[str, Any]] = []
        for it, recs in zip(idents, results):
            counts[it["split"]]["ids"] += 1
            for rec in recs:
                rel = f"{IMG_SUBDIR}/{rec['name']}"
                reid_raw.append({
                    "split": it["split"],
                    "captions": rec["captions"],
                    "file_path": rel,
                    "processed_tokens": [tokenize(c) for c in rec["captions"]],
                    # the corpus carries no identity labels: every image is its own id
                    "id": len(reid_raw) + 1 if web else it["id"],
                })
                for note in rec.get("noise", []):
                    for k in noise:
                        noise[k] += note[k]
                if it["split"] == "test" and "style_shift" in rec:
                    style_shift.append({**reid_raw[-1], "captions": [rec["style_shift"]],
                                        "processed_tokens": [tokenize(rec["style_shift"])]})
                prm = rec["params"]
                images.append({
                    "file_path": rel,
                    "id": it["id"],
                    "split": it["split"],
                    "view": prm["view"],
                    "facing": prm["facing"],
                    "near_side": prm["near_side"],
                    "occlusion": prm["occlusion"],
                    "occluder_top": prm["occluder_top"],
                    "pole": prm["pole"],
                    "distractor": prm["distractor"],
                    "straps_visible": prm["straps_visible"],
                    "attributes": {s: {"value": it["attributes"][s], "visible": prm["visible"][s]}
                                   for s in ATTRIBUTE_SLOTS},
                    "terse_captions": rec["terse"],
                    **({"caption_noise": rec["noise"]} if web else {}),
                    "caption_mentions": rec["mentions"],
                    "render": {k: prm[k] for k in ("scale", "shift_x", "shift_y", "swing", "stride", "stance",
                                                   "brightness", "cast", "blur")},
                })
                c = counts[it["split"]]
                c["images"] += 1
                c["captions"] += len(rec["captions"])
                c["terse_captions"] += sum(rec["terse"])
        identities = [{
            "id": it["id"],
            "split": it["split"],
            "attributes": it["attributes"],
            "variant_of": it["variant_of"],
            "variant_change": it["variant_change"],
            "appearance": it["appearance"],
        } for it in idents]
        num_variants = sum(1 for it in idents if it["variant_of"] is not None)
        meta = {
            "name": "tbps-synth",
            "version": SYNTH_VERSION,
            "preset": p.name,
            "seed": int(seed),
            "height": p.height,
            "width": p.width,
            "counts": counts,
            "num_ids": len(idents),
            "num_images": len(reid_raw),
            "num_captions": sum(len(e["captions"]) for e in reid_raw),
            "num_variant_ids": num_variants,
            "preset_config": p.to_dict(),
            **({"caption_noise": noise} if web else {}),
        }
        attributes = {
            "version": SYNTH_VERSION,
            "slots": ATTRIBUTE_SLOTS,
            "colours": COLOURS,
            "hair_colours": HAIR_COLOURS,
            "notes": ("visible=False for absent items (value null or 'none') and for items hidden in that image; "
                      "variant_of names the prototype identity a variant differs from in exactly one attribute "
                      "('swap_colours' = upper and lower colours exchanged); caption_mentions lists the slots each "
                      "caption names (always a subset of the visible ones)."),
            "identities": identities,
            "images": images,
        }
        _write_json(tmp / "attributes.json", attributes)
        _write_json(tmp / "meta.json", meta, indent=2)
        _write_json(tmp / "reid_raw.json", reid_raw)
        if style_shift:  # a test-only dataset folder sharing the images: tbps eval RUN --data-root <out>/style_shift
            (tmp / STYLE_SHIFT_DIR).mkdir()
            os.symlink(os.path.join("..", "imgs"), tmp / STYLE_SHIFT_DIR / "imgs")
            _write_json(tmp / STYLE_SHIFT_DIR / "reid_raw.json", style_shift)

        # Swap into place; reid_raw.json goes away first and comes back last.
        final_raw = out / "reid_raw.json"
        if final_raw.exists():
            final_raw.unlink()
        (out / "imgs").mkdir(exist_ok=True)
        final_imgs = out / "imgs" / IMG_SUBDIR
        if final_imgs.exists():
            old = tmp / "old_imgs"
            os.replace(final_imgs, old)
        os.replace(tmp_imgs, final_imgs)
        os.replace(tmp / "attributes.json", out / "attributes.json")
        os.replace(tmp / "meta.json", out / "meta.json")
        if style_shift:
            shutil.rmtree(out / STYLE_SHIFT_DIR, ignore_errors=True)
            os.replace(tmp / STYLE_SHIFT_DIR, out / STYLE_SHIFT_DIR)
        os.replace(tmp / "reid_raw.json", final_raw)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    seconds = time.time() - t0
    summary = {
        "out_dir": str(out),
        "preset": p.name,
        "seed": int(seed),
        "height": p.height,
        "width": p.width,
        "splits": {s: {k: v for k, v in c.items()} for s, c in counts.items()},
        "num_ids": meta["num_ids"],
        "num_images": meta["num_images"],
        "num_captions": meta["num_captions"],
        "num_variant_ids": num_variants,
        **({"caption_noise": noise} if web else {}),
        "workers": workers,
        "seconds": round(seconds, 2),
    }
    return summary


__all__ = ["generate", "resolve_preset", "SYNTH_VERSION", "Difficulty", "Preset", "PRESETS"]
