"""Plain records that every dataset reader returns and every later stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TrainSample:
    """One (image, caption) pair: the unit of training in every published protocol."""

    image_path: str  # absolute path
    caption: str
    pid: int  # identity remapped to 0..num_train_ids-1
    image_index: int  # index of the image among the train images (0..), shared by its captions


@dataclass
class EvalSplit:
    """A val or test split: a gallery of images and a list of text queries."""

    image_paths: list[str]  # absolute paths
    image_pids: list[int]  # original dataset ids (not remapped)
    captions: list[str]
    caption_pids: list[int]
    caption_image_index: list[int]  # which gallery image each caption was written for

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_queries(self) -> int:
        return len(self.captions)

    @property
    def num_ids(self) -> int:
        return len(set(self.image_pids))


@dataclass
class Dataset:
    """What `tbps.data.load_dataset` returns."""

    name: str
    root: Path
    train: list[TrainSample]
    num_train_ids: int
    val: EvalSplit | None  # None where the dataset has no validation split (ICFG-PEDES)
    test: EvalSplit
    warnings: list[str] = field(default_factory=list)
