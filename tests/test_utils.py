"""Tests for tbps.utils: atomic writes, seeding, JSONL logging, machine info."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tbps.utils import (
    JsonlLogger,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    read_jsonl,
    seed_everything,
)


class Unserialisable:
    """Breaks json.dump and pickling part-way through writing."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle me")


def only_file(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- #
# atomic writes
# --------------------------------------------------------------------------- #
def test_atomic_writes_roundtrip(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "t.txt", "héllo\r\nworld\n")
    atomic_write_json(tmp_path / "j.json", {"a": np.float32(0.5), "b": torch.tensor([1, 2]), "p": Path("x")})
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_bytes() == "héllo\r\nworld\n".encode()  # no newline translation
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": 0.5, "b": [1, 2], "p": "x"}
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.arange(3))
    assert only_file(tmp_path) == ["b.bin", "c.pt", "j.json", "t.txt"]


def test_atomic_overwrite_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_json_failure_midway_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"R1": 1.0})
    # "first" is written into the temp file before the second value fails to serialise
    with pytest.raises(TypeError, match="Unserialisable"):
        atomic_write_json(target, {"first": "x" * 100_000, "bad": Unserialisable()})
    assert json.loads(target.read_text()) == {"R1": 1.0}
    assert only_file(tmp_path) == ["metrics.json"]  # temp file removed


def test_torch_save_failure_midway_keeps_old_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"step": 1}, target)
    with pytest.raises(RuntimeError, match="cannot pickle me"):
        atomic_torch_save({"big": torch.zeros(100_000), "bad": Unserialisable()}, target)
    assert torch.load(target) == {"step": 1}
    assert only_file(tmp_path) == ["ckpt.pt"]


def test_atomic_write_in_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "f.txt", "x")
    assert only_file(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_text("old")
    target.chmod(0o751)
    atomic_write_text(target, "new")
    assert target.stat().st_mode & 0o777 == 0o751
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    assert fresh.stat().st_mode & 0o777 != 0o600  # not mkstemp's private mode


def test_atomic_write_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic_write_text("rel.txt", "ok")
    assert (tmp_path / "rel.txt").read_text() == "ok"


# --------------------------------------------------------------------------- #
# seeding
# --------------------------------------------------------------------------- #
@pytest.fixture()
def restore_determinism():
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def draw() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.nn.Linear(4, 2).weight.sum().item()


def test_seed_everything_reproducible(restore_determinism) -> None:
    seed_everything(123)
    a = draw()
    seed_everything(123)
    b = draw()
    seed_everything(124)
    c = draw()
    assert a == b
    assert all(x != y for x, y in zip(a, c))
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()


def test_seed_everything_non_deterministic_mode(restore_determinism) -> None:
    seed_everything(2**40, deterministic=False)  # large seeds are fine for numpy too
    assert not torch.are_deterministic_algorithms_enabled()
    a = draw()
    seed_everything(2**40, deterministic=False)
    assert draw() == a


# --------------------------------------------------------------------------- #
# JSONL
# --------------------------------------------------------------------------- #
def test_jsonl_logger_appends_with_time(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "train.jsonl"
    with JsonlLogger(path) as log:
        log.log({"step": 1, "loss": np.float32(0.5)})
        # flushed per call: readable while the logger is still open
        assert read_jsonl(path)[0]["step"] == 1
        log.log({"step": 2, "time": 5.0})
    with JsonlLogger(path) as log:  # reopening appends
        log.log({"step": 3, "t": torch.tensor(2.5)})
    records = read_jsonl(path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert isinstance(records[0]["time"], float) and records[0]["loss"] == 0.5
    assert records[1]["time"] == 5.0  # an explicit time is kept
    assert records[2]["t"] == 2.5
    assert path.read_text().count("\n") == 3


def test_read_jsonl_tolerates_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    # truncated in the middle of a multi-byte character
    path.write_bytes('{"step": 1}\n{"name": "é'.encode()[:-1])
    assert read_jsonl(path) == [{"step": 1}]
    # a complete last record without the newline is kept
    path.write_text('{"step": 1}\n{"step": 2}')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text("")
    assert read_jsonl(path) == []


def test_read_jsonl_rejects_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 2"):
        read_jsonl(path)


def test_logger_resumes_after_killed_run(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')  # the killed run's half line
    with JsonlLogger(path) as log:
        log.log({"step": 3})
    assert [r["step"] for r in read_jsonl(path)] == [1, 3]
    path.write_text('{"step": 1, "lo')  # no complete line at all
    with JsonlLogger(path) as log:
        log.log({"step": 2})
    assert [r["step"] for r in read_jsonl(path)] == [2]


def test_logger_rejects_non_dict_and_closed(tmp_path: Path) -> None:
    log = JsonlLogger(tmp_path / "x.jsonl")
    with pytest.raises(TypeError):
        log.log([1, 2])  # type: ignore[arg-type]
    log.close()
    log.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        log.log({"a": 1})


# --------------------------------------------------------------------------- #
# machine info
# --------------------------------------------------------------------------- #
def test_machine_info() -> None:
    info = machine_info()
    for key in ("cpu", "cpu_count", "memory_gb", "torch", "python", "platform", "gpu", "cuda_available"):
        assert key in info, key
    assert info["torch"] == torch.__version__
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["cpu_count"] >= 1
    json.dumps(info)  # goes straight into result files
