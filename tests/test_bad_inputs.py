"""Bad input and faults through the real command line: a clear one-line error naming the file,
field or value, never a traceback, and a failed command leaves existing runs and indexes as they
were (compared byte for byte).

One tiny run (one training step, written by `tbps train`) and one tiny index are made once for the
module; every case copies what it damages.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures import render_tiny_benchmark
from tbps.cli import main
from tbps.errors import ImageReadError

TINY_MODEL = [
    "backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, text_heads: 2, "
    "text_layers: 1, embed_dim: 16}",
    "method.cross_layers=1", "train.batch_size=16", "train.device=cpu", "train.amp=null",
    "data.tokenizer_vocab_size=300", "data.cache_images=false", "data.image_size=[32, 16]",
]


def _train_args(data: Path, out: Path, *extra: str, config: str = "irra_tiny_scratch", model: list[str] = TINY_MODEL) -> list[str]:
    args = ["train", "--config", config, "--out", str(out), "--quiet", "--set", f"data.root={data}"]
    for s in [*model, "train.stop_after_steps=1", "train.ckpt_every_steps=1", *extra]:
        args += ["--set", s]
    return args


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `tbps ARGS` in this process -> (exit code, stdout, stderr); an argparse refusal is exit 2."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` -> sha256 of its bytes (the artefact, exactly)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return render_tiny_benchmark(tmp_path_factory.mktemp("bad-data") / "tiny")


@pytest.fixture(scope="module")
def run(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("bad-run") / "run"
    assert main(_train_args(data, out)) == 0
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()
    return out


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, data) -> Path:
    folder = tmp_path_factory.mktemp("bad-gallery") / "gallery"
    folder.mkdir()
    test = [e for e in json.loads((data / "reid_raw.json").read_text()) if e["split"] == "test"][:6]
    for e in test:
        shutil.copy(data / "imgs" / e["file_path"], folder / Path(e["file_path"]).name)
    return folder


@pytest.fixture(scope="module")
def index(tmp_path_factory, run, gallery) -> Path:
    out = tmp_path_factory.mktemp("bad-index") / "index"
    assert main(["index", "build", str(gallery), "--model", str(run), "--out", str(out), "--quiet"]) == 0
    return out


def copy_of(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _first_image(data: Path, split: str) -> Path:
    entry = next(e for e in json.loads((data / "reid_raw.json").read_text()) if e["split"] == split)
    return data / "imgs" / entry["file_path"]


# ============================================================================ unreadable images

UNREADABLE = {
    "zero bytes": (b"", "0 bytes"),
    "not an image": (b"these are words, not pixels\n", "cannot read image"),
    "truncated png": (None, "cannot read image"),
}


def _damage_image(path: Path, kind: str) -> None:
    content, _ = UNREADABLE[kind]
    if content is None:
        content = path.read_bytes()[: max(40, path.stat().st_size // 3)]
    path.write_bytes(content)


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_train_stops_naming_an_unreadable_image_in_the_image_cache(capsys, tmp_path, data, kind):
    data2 = copy_of(data, tmp_path, "data")
    bad = _first_image(data2, "train")
    _damage_image(bad, kind)
    code, _, err = cli(capsys, *_train_args(data2, tmp_path / "run", "data.cache_images=true"))
    assert code == 2
    assert str(bad) in err and UNREADABLE[kind][1] in err


def test_eval_stops_naming_an_unreadable_gallery_image(capsys, tmp_path, data, run):
    data2 = copy_of(data, tmp_path, "data")
    bad = _first_image(data2, "test")
    _damage_image(bad, "not an image")
    code, _, err = cli(capsys, "eval", run, "--data-root", data2, "--quiet")
    assert code == 2 and str(bad) in err and "cannot read image" in err


@pytest.mark.parametrize("missing", [False, True])
def test_an_unreadable_image_in_a_loader_worker_keeps_a_one_line_message(tmp_path, missing):
    from torch.utils.data import DataLoader

    from tbps.data.loader import ImageList
    from tbps.data.transforms import build_transform

    bad = tmp_path / "bad.png"
    if not missing:
        bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    loader = DataLoader(ImageList([str(bad)], build_transform(32, 16, False)), batch_size=1, num_workers=1)
    with pytest.raises(FileNotFoundError if missing else ImageReadError) as info:
        next(iter(loader))
    assert isinstance(info.value, ImageReadError)  # the CLI reports both as one line
    assert str(info.value).endswith(str(bad)) if missing else str(bad) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_index_build_skips_and_lists_unreadable_images(capsys, tmp_path, run, gallery):
    g2 = copy_of(gallery, tmp_path, "gallery")
    (g2 / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (g2 / "empty.jpg").write_bytes(b"")
    code, out, err = cli(capsys, "index", "build", g2, "--model", run, "--out", tmp_path / "ix", "--quiet")
    assert code == 0 and json.loads(out)["skipped"] == 2
    assert "broken.png" in err and "empty.jpg" in err and "0 bytes" in err
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert sorted(Path(s["path"]).name for s in manifest["skipped"]) == ["broken.png", "empty.jpg"]


def test_index_build_with_only_unreadable_images_fails(capsys, tmp_path, run):
    g = tmp_path / "gallery"
    g.mkdir()
    (g / "a.jpg").write_bytes(b"")
    (g / "b.png").write_text("text")
    code, _, err = cli(capsys, "index", "build", g, "--model", run, "--out", tmp_path / "ix", "--quiet")
    assert code == 1 and "holds no images" in err and str(g) in err


def test_index_build_on_a_folder_without_images_refuses_before_writing(capsys, tmp_path, run):
    g = tmp_path / "gallery"
    g.mkdir()
    (g / "notes.txt").write_text("no pictures here")
    code, _, err = cli(capsys, "index", "build", g, "--model", run, "--out", tmp_path / "ix", "--quiet")
    assert code == 2 and "no images to index" in err and str(g) in err
    assert not (tmp_path / "ix").exists()


# ============================================================================ PIL modes


def _twin_pixels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(24, 12, 3), dtype=np.uint8)


def _load(tmp_path: Path, img: Image.Image, name: str) -> np.ndarray:
    from tbps.data.transforms import load_image

    path = tmp_path / name
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    return np.asarray(out, dtype=np.int16)


def _grey() -> tuple[Image.Image, np.ndarray]:
    grey = Image.fromarray(_twin_pixels()).convert("L")
    return grey, np.asarray(grey.convert("RGB"), dtype=np.int16)


def test_16_bit_png_matches_its_8_bit_twin(tmp_path):
    grey, twin = _grey()
    img16 = Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)
    assert img16.mode.startswith("I;16")
    assert np.abs(_load(tmp_path, img16, "g16.png") - twin).max() == 0


@pytest.mark.parametrize("scale", [1, 257])
def test_32_bit_integer_image_matches_its_8_bit_twin(tmp_path, scale):
    grey, twin = _grey()
    img = Image.fromarray(np.asarray(grey, dtype=np.int32) * scale, "I")
    assert np.abs(_load(tmp_path, img, f"i{scale}.tif") - twin).max() == 0


@pytest.mark.parametrize("unit", [True, False])
def test_float_image_matches_its_8_bit_twin(tmp_path, unit):
    grey, twin = _grey()
    values = np.asarray(grey, dtype=np.float32) / (255.0 if unit else 1.0)
    img = Image.fromarray(values, "F")
    assert np.abs(_load(tmp_path, img, f"f{unit}.tif") - twin).max() <= 1


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255.0
    return np.rint(rgb * a + 255.0 * (1 - a)).astype(np.int16)


def test_palette_image_with_transparency_is_composited_like_its_rgb_twin(tmp_path):
    pal = Image.fromarray(_twin_pixels()).quantize(16)
    pal.info["transparency"] = 0
    index = np.asarray(pal)
    rgb = np.asarray(pal.convert("RGB"), dtype=np.int16)
    expected = np.where((index == 0)[..., None], 255, rgb)
    assert (index == 0).any()
    pal.save(tmp_path / "p.png", transparency=0)
    from tbps.data.transforms import load_image

    got = np.asarray(load_image(tmp_path / "p.png"), dtype=np.int16)
    assert np.abs(got - expected).max() == 0


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_images_with_alpha_are_composited_over_white(tmp_path, mode):
    px = _twin_pixels()
    alpha = np.tile(np.array([0, 128, 255], dtype=np.uint8), (24, 4))
    colour = np.asarray(Image.fromarray(px).convert("L").convert("RGB")) if mode == "LA" else px
    base = Image.fromarray(colour).convert("L" if mode == "LA" else "RGB")
    img = base.copy()
    img.putalpha(Image.fromarray(alpha))
    assert img.mode == mode
    assert np.abs(_load(tmp_path, img, f"{mode}.png") - _over_white(colour, alpha)).max() <= 1


def test_cmyk_image_matches_its_rgb_twin(tmp_path):
    px = _twin_pixels()
    img = Image.fromarray(px).convert("CMYK")
    assert np.abs(_load(tmp_path, img, "cmyk.tif") - px.astype(np.int16)).max() == 0


def test_training_and_evaluation_transforms_see_a_16_bit_image_as_its_twin(tmp_path):
    from tbps.data.transforms import build_transform, load_image

    grey, _ = _grey()
    Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257).save(tmp_path / "g16.png")
    grey.save(tmp_path / "g8.png")
    for train in (False, True):
        tf = build_transform(32, 16, train)
        x16 = tf(load_image(tmp_path / "g16.png"), torch.Generator().manual_seed(1))
        x8 = tf(load_image(tmp_path / "g8.png"), torch.Generator().manual_seed(1))
        assert torch.equal(x16, x8)
    # an image handed over already open (explain, search by image) goes through the same conversion
    with Image.open(tmp_path / "g16.png") as raw:
        assert torch.equal(build_transform(32, 16, False)(raw), build_transform(32, 16, False)(grey))


# ============================================================================ checkpoints


def _damage_weights(path: Path, kind: str) -> None:
    from safetensors.torch import load_file, save_file

    if kind == "zero bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not safetensors":
        path.write_bytes(os.urandom(4096))
    elif kind == "other shape":
        state = load_file(str(path))
        name = next(k for k, v in state.items() if v.ndim == 2)
        state[name] = torch.zeros(state[name].shape[0] + 3, state[name].shape[1])
        save_file(state, str(path))


@pytest.mark.parametrize("kind,expected", [("zero bytes", "0 bytes"), ("truncated", "not a readable safetensors"),
                                           ("not safetensors", "not a readable safetensors"),
                                           ("other shape", "differ in shape")])
def test_eval_names_a_damaged_checkpoint(capsys, tmp_path, run, kind, expected):
    run2 = copy_of(run, tmp_path, "run")
    weights = run2 / "checkpoints" / "last" / "model.safetensors"
    _damage_weights(weights, kind)
    before = tree_digest(run2)
    code, _, err = cli(capsys, "eval", run2, "--quiet")
    assert code == 2 and str(weights) in err and expected in err
    assert tree_digest(run2) == before


def test_eval_names_a_checkpoint_of_another_method(capsys, tmp_path, run):
    run2 = copy_of(run, tmp_path, "run")
    meta = run2 / "checkpoints" / "last" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "method": "cada"}))
    code, _, err = cli(capsys, "eval", run2, "--quiet")
    assert code == 2 and "cada" in err and "method.name=irra" in err


def test_eval_names_a_broken_meta_json(capsys, tmp_path, run):
    run2 = copy_of(run, tmp_path, "run")
    meta = run2 / "checkpoints" / "last" / "meta.json"
    meta.write_text("{not json")
    code, _, err = cli(capsys, "eval", run2, "--quiet")
    assert code == 2 and str(meta) in err


def test_resume_with_a_truncated_trainer_state_leaves_the_run_as_it_was(capsys, tmp_path, data, run):
    run2 = copy_of(run, tmp_path, "run")
    state = run2 / "checkpoints" / "last" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    before = tree_digest(run2)
    code, _, err = cli(capsys, "train", "--out", run2, "--resume", "--quiet")
    assert code == 2 and str(state) in err
    assert tree_digest(run2) == before


# ============================================================================ resume with another config


@pytest.mark.parametrize("change,expected", [
    (["--set", "backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, "
      "text_heads: 2, text_layers: 1, embed_dim: 24}"], "differ in shape"),
    (["--set", "method.cross_layers=2"], "does not match the model"),
    (["--set", "train.epochs=abc"], "train.epochs"),
])
def test_resume_with_an_incompatible_config_changes_nothing(capsys, tmp_path, data, run, change, expected):
    run2 = copy_of(run, tmp_path, "run")
    before = tree_digest(run2)
    args = _train_args(data, run2)
    code, _, err = cli(capsys, *args, "--resume", *change)
    assert code == 2 and expected in err
    assert tree_digest(run2) == before  # config.yaml, checkpoints and logs byte for byte


def test_resume_with_another_method_changes_nothing(capsys, tmp_path, data, run):
    run2 = copy_of(run, tmp_path, "run")
    before = tree_digest(run2)
    code, _, err = cli(capsys, *_train_args(data, run2, config="uca_tiny_scratch"), "--resume")
    assert code == 2 and "irra" in err and "uca" in err
    assert tree_digest(run2) == before


# ============================================================================ config values


@pytest.mark.parametrize("override,key", [
    ("data.root=null", "data.root"),
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=-2", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=-16", "train.batch_size"),
    ("train.lr=fast", "train.lr"),
    ("data.max_text_len=1.5", "data.max_text_len"),
    ("data.num_workers=-1", "data.num_workers"),
    ("train=3", "train"),
    ("train.optimizer=3", "train.optimizer"),
    ("data.augment.pad=wide", "data.augment.pad"),
    ("method.cross_layers=abc", "method.cross_layers"),
    ("method.tau=null", "method.tau"),
])
def test_train_refuses_a_bad_config_value_before_reading_data(capsys, tmp_path, override, key):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--config", "irra_tiny_scratch", "--out", out, "--quiet",
                       "--set", "data.root=/nonexistent/dataset", "--set", override)
    assert code == 2 and f"{key}:" in err and override.split("=", 1)[1] in err
    assert "/nonexistent/dataset" not in err or key == "data.root"  # no data was looked at
    assert not out.exists()


def test_eval_names_a_null_data_root_in_the_run_config(capsys, tmp_path, run):
    run2 = copy_of(run, tmp_path, "run")
    cfg = run2 / "config.yaml"
    import yaml

    loaded = yaml.safe_load(cfg.read_text())
    loaded["data"]["root"] = None
    cfg.write_text(yaml.safe_dump(loaded))
    code, _, err = cli(capsys, "eval", run2, "--quiet")
    assert code == 2 and "data.root" in err and str(cfg) in err


# ============================================================================ command-line numbers


@pytest.mark.parametrize("args,flag", [
    (["serve", "IDX", "--port", "70000"], "--port"),
    (["serve", "IDX", "--port", "-1"], "--port"),
    (["serve", "IDX", "--port", "http"], "--port"),
    (["serve", "IDX", "--max-k", "0"], "--max-k"),
    (["search", "IDX", "a man", "-k", "0"], "-k"),
    (["search", "IDX", "a man", "-k", "-5"], "-k"),
    (["search", "IDX", "a man", "--rerank", "-1"], "--rerank"),
    (["index", "build", "G", "--model", "M", "--out", "O", "--workers", "-1"], "--workers"),
    (["index", "build", "G", "--model", "M", "--out", "O", "--batch-size", "0"], "--batch-size"),
    (["index", "build", "G", "--model", "M", "--out", "O", "--recall-target", "1.5"], "--recall-target"),
    (["index", "add", "IDX", "x.jpg", "--workers", "-3"], "--workers"),
    (["synth", "--out", "O", "--workers", "0"], "--workers"),
    (["synth", "--out", "O", "--height", "-8"], "--height"),
    (["train", "--config", "irra_tiny_scratch", "--nproc", "0"], "--nproc"),
    (["demo", "--epochs", "0"], "--epochs"),
    (["export", "RUN", "--onnx", "O", "--opset", "0"], "--opset"),
])
def test_out_of_range_numbers_are_refused_at_parse_time(capsys, args, flag):
    code, _, err = cli(capsys, *args)
    value = args[args.index(flag) + 1]
    assert code == 2 and f"argument {flag}" in err and value in err


# ============================================================================ datasets


def _edited_dataset(data: Path, tmp_path: Path, edit) -> Path:
    d2 = tmp_path / "data"
    d2.mkdir()
    (d2 / "imgs").symlink_to(data / "imgs")
    entries = json.loads((data / "reid_raw.json").read_text())
    edit(entries)
    (d2 / "reid_raw.json").write_text(json.dumps(entries))
    return d2


def _share_identity(entries: list[dict]) -> None:
    train_id = next(e["id"] for e in entries if e["split"] == "train")
    for e in [e for e in entries if e["split"] == "test"][:2]:
        e["id"] = train_id


def test_an_identity_in_two_splits_is_a_warning_with_count_and_ids(tmp_path, data):
    from tbps.data import load_dataset
    from tbps.data.datasets import DatasetWarning

    d2 = _edited_dataset(data, tmp_path, _share_identity)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_dataset("synth", d2)
    text = " ".join(str(w.message) for w in caught if issubclass(w.category, DatasetWarning))
    shared = next(e["id"] for e in json.loads((d2 / "reid_raw.json").read_text()) if e["split"] == "train")
    assert "1 in test and train" in text and str(shared) in text


def test_an_identity_in_two_splits_stops_train_with_data_strict(capsys, tmp_path, data):
    d2 = _edited_dataset(data, tmp_path, _share_identity)
    code, _, err = cli(capsys, *_train_args(d2, tmp_path / "run", "data.strict=true"))
    assert code == 2 and "more than one split" in err and str(d2 / "reid_raw.json") in err


def _escape_root(entries: list[dict]) -> None:
    entries[3]["file_path"] = "../../../etc/hostname"


def test_an_image_path_outside_the_dataset_is_refused(capsys, tmp_path, data):
    d2 = _edited_dataset(data, tmp_path, _escape_root)
    code, _, err = cli(capsys, *_train_args(d2, tmp_path / "run"))
    assert code == 2 and "entry 3" in err and "file_path" in err and "../../../etc/hostname" in err
    assert "allow_outside_root" in err


def test_an_image_path_outside_the_dataset_is_a_warning_with_the_switch(tmp_path, data):
    from tbps.data import load_dataset
    from tbps.data.datasets import DatasetWarning

    d2 = _edited_dataset(data, tmp_path, _escape_root)
    with pytest.warns(DatasetWarning, match="lead outside"):
        load_dataset("synth", d2, check_images=False, allow_outside_root=True)


# ============================================================================ writes into existing artefacts


def test_index_overwrite_with_a_damaged_model_leaves_the_index_as_it_was(capsys, tmp_path, run, gallery, index):
    ix = copy_of(index, tmp_path, "index")
    run2 = copy_of(run, tmp_path, "run")
    (run2 / "checkpoints" / "last" / "model.safetensors").write_bytes(b"")
    before = tree_digest(ix)
    code, _, err = cli(capsys, "index", "build", gallery, "--model", run2, "--out", ix, "--overwrite", "--quiet")
    assert code == 2 and "model.safetensors" in err
    assert tree_digest(ix) == before


# ============================================================================ pipes and the service


def test_output_into_a_closed_pipe_exits_quietly(tmp_path, index):
    proc = subprocess.Popen([sys.executable, "-m", "tbps", "index", "info", str(index)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, as with `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.fixture(scope="module")
def client(index):
    from fastapi.testclient import TestClient

    from tbps.retrieval.serve import create_app

    return TestClient(create_app(index), raise_server_exceptions=False)


@pytest.mark.parametrize("body,field", [
    (b'{"text": "\\ud800 a man"}', "text"),
    (b'{"text": "a man", "k": "\\ud800"}', "k"),
    (b'{"text": "a man", "\\udc80": 1}', "\\udc80"),
    (b'{"text": ["a man"]}', "text"),
    (b'{"text": "a man", "k": 100000000000000000000000000000}', "k"),
    (b'{"text": "a man \xff\xfe"}', "body"),
])
def test_the_service_answers_bad_requests_with_4xx_and_a_message(client, body, field):
    r = client.post("/search", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert field in r.json()["detail"]


def test_the_service_still_answers_good_requests(client):
    r = client.post("/search", json={"text": "a man in a red jacket", "k": 3})
    assert r.status_code == 200 and len(r.json()["hits"]) == 3


def test_search_names_a_query_that_is_not_valid_text(capsys, index):
    code, _, err = cli(capsys, "search", index, "a man \udcff")
    assert code == 2 and "not valid Unicode" in err and "position 6" in err


def test_the_explain_endpoint_refuses_text_that_is_not_valid_unicode(client):
    r = client.post("/explain", content=b'{"text": "a \\udfff", "id": 0}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "field 'text'" in r.json()["detail"] and "\\udfff" in r.json()["detail"]


def test_eval_json_onto_a_folder_names_it(capsys, tmp_path, run):
    target = tmp_path / "metrics.json"
    target.mkdir()
    code, _, err = cli(capsys, "eval", run, "--json", target, "--quiet")
    assert code == 2 and str(target) in err and list(target.iterdir()) == []


# ============================================================================ backbone.pretrained files


def _pretrained_file(tmp_path: Path, kind: str) -> Path:
    if kind == "random bytes":
        path = tmp_path / "weights.pth"
        path.write_bytes(b"\x13" + os.urandom(4095))  # never a zip or pickle header by chance
    elif kind == "random bytes, pickle header":
        path = tmp_path / "weights.pth"
        path.write_bytes(b"\x80\x02" + os.urandom(4094))
    elif kind == "text file":
        path = tmp_path / "weights.pt"
        path.write_text("model weights are at https://example.org\n")
    elif kind == "zero bytes":
        path = tmp_path / "weights.pth"
        path.write_bytes(b"")
    elif kind == "random safetensors":
        path = tmp_path / "weights.safetensors"
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated torch.save":
        path = tmp_path / "weights.pth"
        torch.save({"visual.class_embedding": torch.zeros(64)}, path)
        path.write_bytes(path.read_bytes()[:200])
    else:  # wrong shapes: a CLIP-layout state dict of a wider model
        from tbps.models import backbone_config, build_backbone

        wide = build_backbone(backbone_config("tiny-clip", vision_width=64, vision_heads=2, vision_layers=1,
                                              text_width=64, text_heads=2, text_layers=1, embed_dim=16,
                                              vocab_size=300))
        path = tmp_path / "weights.pt"
        torch.save(wide.state_dict(), path)
    return path


@pytest.mark.parametrize("kind,expected", [
    ("random bytes", "not a PyTorch checkpoint"),
    ("random bytes, pickle header", "truncated or corrupt"),
    ("text file", "text file"),
    ("zero bytes", "0 bytes"),
    ("random safetensors", "not a readable safetensors"),
    ("truncated torch.save", "cannot read"),
    ("wrong shapes", "shape mismatches"),
])
def test_a_bad_pretrained_file_is_named(capsys, tmp_path, data, kind, expected):
    weights = _pretrained_file(tmp_path, kind)
    out = tmp_path / "run"
    code, _, err = cli(capsys, *_train_args(data, out, f"backbone.pretrained={weights}"))
    assert code == 2 and str(weights) in err and expected in err
    assert "pretrained_trust_pickle" not in err  # that advice is for real checkpoints holding Python objects
    assert not (out / "config.yaml").exists()


# ============================================================================ damaged indexes


def _damage_manifest(ix: Path, kind: str) -> None:
    path = ix / "manifest.json"
    m = json.loads(path.read_text())
    if kind == "a list":
        m = [m]
    elif kind == "count as text":
        m["count"] = "six"
    elif kind == "no shards":
        del m["shards"]
    elif kind == "faiss not an object":
        m["faiss"] = "flat"
    elif kind == "shard without file":
        m["shards"][0] = {"count": 3}
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("kind", ["a list", "count as text", "no shards", "faiss not an object", "shard without file"])
@pytest.mark.parametrize("command", ["search", "info"])
def test_a_manifest_of_the_wrong_shape_is_named_with_how_to_rebuild(capsys, tmp_path, index, kind, command):
    ix = copy_of(index, tmp_path, "index")
    _damage_manifest(ix, kind)
    args = ["search", ix, "a man"] if command == "search" else ["index", "info", ix]
    code, _, err = cli(capsys, *args)
    assert code == 2 and str(ix / "manifest.json") in err and "--overwrite" in err


@pytest.mark.parametrize("what", ["faiss", "shard"])
def test_a_truncated_index_file_is_named_with_how_to_rebuild(capsys, tmp_path, index, what):
    ix = copy_of(index, tmp_path, "index")
    m = json.loads((ix / "manifest.json").read_text())
    damaged = ix / (m["faiss"]["file"] if what == "faiss" else m["shards"][0]["file"])
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    code, _, err = cli(capsys, "search", ix, "a man")
    assert code == 2 and str(damaged) in err and "--overwrite" in err


def test_adding_to_a_damaged_index_leaves_it_as_it_was(capsys, tmp_path, index, gallery):
    ix = copy_of(index, tmp_path, "index")
    _damage_manifest(ix, "count as text")
    before = tree_digest(ix)
    code, _, err = cli(capsys, "index", "add", ix, gallery, "--quiet")
    assert code == 2 and "manifest.json" in err
    assert tree_digest(ix) == before
