"""Small infrastructure helpers: crash-safe writes, seeding, JSONL logs, machine info.

Runs get killed (pre-emption, OOM, Ctrl-C). Every file a run produces is
therefore written atomically (temp file in the same folder + fsync +
``os.replace``) so a reader only ever sees the old or the new version, and the
JSONL log reader tolerates the half-written last line a kill can leave.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "seed_everything",
    "JsonlLogger",
    "read_jsonl",
    "sha256_file",
    "machine_info",
    "to_jsonable",
]

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- #
# atomic writes
# --------------------------------------------------------------------------- #
def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); best effort where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """0o666 minus the umask, read without the racy set-and-restore of os.umask."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on clean exit it replaces ``path`` atomically.

    If the body raises, the temp file is deleted and ``path`` is left untouched.
    The new file keeps the permissions of the file it replaces (or 0o666 - umask).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        try:
            file_mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            file_mode = _default_mode()
        os.chmod(tmp, file_mode)
        text_kwargs = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **text_kwargs) as f:
            fd = -1  # now owned by the file object
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the complete new content."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Atomic counterpart of ``Path.write_text`` (no newline translation)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def to_jsonable(obj: Any) -> Any:
    """``json`` fallback for the values runs produce: numpy/torch scalars and arrays, paths, sets."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.dim() == 0 else obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON (numpy/torch values allowed) and write it atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent, default=to_jsonable, ensure_ascii=False)
        f.write("\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` that never leaves a truncated checkpoint behind."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


# --------------------------------------------------------------------------- #
# seeding
# --------------------------------------------------------------------------- #
def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices) so a run can be repeated.

    With ``deterministic`` torch is asked for deterministic kernels
    (``warn_only=True``: ops without one warn instead of failing) and cuDNN
    autotuning is switched off. Note this setting is process-wide.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    os.environ["PYTHONHASHSEED"] = str(seed)  # affects child processes only
    if deterministic:
        # cuBLAS needs this to be deterministic; must be set before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


# --------------------------------------------------------------------------- #
# JSONL logs
# --------------------------------------------------------------------------- #
class JsonlLogger:
    """Append-only JSON-lines log: one record per ``log`` call, flushed immediately.

    Appending to a log left by a killed run first drops its incomplete last line,
    so resumed runs keep the file valid.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_partial_last_line()
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def _drop_partial_last_line(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            # walk back to the last newline and cut everything after it
            pos, block = size, 4096
            while pos > 0:
                start = max(0, pos - block)
                f.seek(start)
                chunk = f.read(pos - start)
                idx = chunk.rfind(b"\n")
                if idx != -1:
                    f.truncate(start + idx + 1)
                    return
                pos = start
            f.truncate(0)

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` plus a ``time`` field (unix seconds) unless it has one."""
        if not isinstance(record, dict):
            raise TypeError(f"JsonlLogger.log expects a dict, got {type(record).__name__}")
        if self._file is None:
            raise ValueError(f"JsonlLogger for {self.path} is closed")
        line = json.dumps({"time": time.time(), **record}, default=to_jsonable, ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Flush, fsync and close the file (idempotent)."""
        if self._file is not None:
            self._file.flush()
            with contextlib.suppress(OSError):
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file; an unterminated, unparseable last line (killed writer) is skipped.

    A corrupt line anywhere else is an error, naming the file and line number.
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_last = number == len(lines)
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if is_last and not complete:
                break  # truncated by a kill mid-write
            raise ValueError(f"{path}: line {number} is not valid JSON: {err}") from err
    return records


# --------------------------------------------------------------------------- #
# machine info
# --------------------------------------------------------------------------- #
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        with contextlib.suppress(Exception):
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
    return platform.processor() or platform.machine() or "unknown"


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def machine_info() -> dict[str, Any]:
    """Describe the hardware and software stack, to print next to benchmark numbers."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = _memory_bytes()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(mem / 2**30, 1) if mem else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            info["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)})
        info["gpu"] = info["gpus"][0]["name"] if info["gpus"] else None
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["gpu"] = None
    return info
