"""Finding and reading the images of a gallery folder."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from ..data.transforms import load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class FileRecord:
    """An image file as indexed: absolute path, size in bytes, modification time (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> "FileRecord":
        p = Path(path).resolve()
        st = p.stat()
        return cls(str(p), int(st.st_size), int(st.st_mtime_ns))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def scan_images(paths: Iterable[str | Path], *, strict: bool = True) -> list[FileRecord]:
    """Image files under each path (a folder, searched recursively, or a single file), sorted by path.

    Hidden files and folders (starting with ".") are ignored. With `strict`, a path that does not
    exist, or a single file without an image extension, is an error naming it.
    """
    found: dict[str, FileRecord] = {}
    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    if not name.startswith(".") and is_image_file(name):
                        full = Path(root) / name
                        try:
                            rec = FileRecord.of(full)
                        except OSError:  # vanished or a broken link: the encoder will report it
                            rec = FileRecord(str(full.absolute()), -1, -1)
                        found[rec.path] = rec
        elif p.is_file():
            if not is_image_file(p):
                if strict:
                    raise ValueError(f"{p} is not an image file: expected one of {', '.join(IMAGE_EXTENSIONS)}")
                continue
            rec = FileRecord.of(p)
            found[rec.path] = rec
        elif strict:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return [found[k] for k in sorted(found)]


class _Images(Dataset):
    """(position, tensor or None, error or None): a failing image is reported, never raised."""

    def __init__(self, records: Sequence[FileRecord], transform: Callable) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(load_image(self.records[i].path), None), None
        except OSError as exc:  # ImageReadError (undecodable) or FileNotFoundError (vanished): skip and list
            return i, None, str(exc)


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> list[tuple[int, torch.Tensor | None, str | None]]:
    return items


def image_batches(records: Sequence[FileRecord], transform: Callable, batch_size: int, num_workers: int = 0):
    """Yield lists of (position, tensor or None, error) in order, `batch_size` records at a time."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_Images(records, transform), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    yield from loader
