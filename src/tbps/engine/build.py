"""Turn a resolved config into the objects a run needs: dataset, tokenizer, transforms, method."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..data import Dataset, load_dataset
from ..data.holdout import hold_out_validation
from ..data.tokenizers import (BertWordPieceTokenizer, ClipBpeTokenizer, TrainedTokenizer, find_clip_bpe,
                               load_tokenizer, tokenizer_from_files)
from ..data.transforms import build_transform
from ..foundation import resolve as resolve_foundation
from ..methods import Method, build_method
from ..models import backbone_config, build_backbone
from ..models.pretrained import checkpoint_folder
from ..models.pretrained import load_pretrained as load_pretrained_weights


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_data(cfg: dict[str, Any]) -> Dataset:
    """The training data of `data.root`; its val/test splits, or with `data.eval_root` (a pretraining
    corpus, which has none) those of that folder."""
    d = cfg["data"]
    dataset = load_dataset(d["dataset"], d["root"], check_images=d["check_images"], strict=d["strict"],
                           allow_outside_root=d["allow_outside_root"])
    if d["eval_root"]:
        evals = load_dataset(d["eval_dataset"], d["eval_root"], check_images=d["check_images"], strict=d["strict"],
                             allow_outside_root=d["allow_outside_root"])
        dataset = dataclasses.replace(dataset, val=evals.val, test=evals.test)
    if d["val_from_train"]:
        dataset = hold_out_validation(dataset, float(d["val_from_train"]))
    return dataset


def build_tokenizer(cfg: dict[str, Any], dataset: Dataset | None, run_dir: Path | None):
    """The run's tokenizer: reloaded from the run folder if saved there, else built and saved."""
    saved = run_dir / "tokenizer" if run_dir is not None else None
    if saved is not None and saved.is_dir():
        return load_tokenizer(saved)
    kind = resolve_foundation(cfg["data"]["tokenizer"], "data.tokenizer")  # foundation:<name> -> its tokenizer/
    pretrained = resolve_foundation(cfg.get("backbone", {}).get("pretrained"), "backbone.pretrained")
    if kind == "trained":
        if dataset is None:
            raise ValueError("a trained tokenizer needs the training captions")
        extra = list(cfg["data"]["tokenizer_extra_special"])
        tok = TrainedTokenizer.train((s.caption for s in dataset.train),
                                     vocab_size=int(cfg["data"]["tokenizer_vocab_size"]), extra_special=extra)
    elif kind == "clip-bpe":  # data.tokenizer_path, else the checkpoint folder, else the copy shipped in tbps
        ckpt_dir = checkpoint_folder(pretrained)
        tok = ClipBpeTokenizer(find_clip_bpe(cfg["data"].get("tokenizer_path"), ckpt_dir))
    elif kind == "bert-wordpiece":  # bert-base-uncased vocab.txt + [DEC]/[ENC], from tokenizer_path or the checkpoint
        src = cfg["data"].get("tokenizer_path") or checkpoint_folder(pretrained)
        tok = tokenizer_from_files(src) if src and Path(src).expanduser().exists() else None
        if not isinstance(tok, BertWordPieceTokenizer):
            raise FileNotFoundError(f"data.tokenizer=bert-wordpiece needs bert-base-uncased's vocab.txt, not found "
                                    f"{'in ' + str(src) if src else 'anywhere'}: set data.tokenizer_path to a "
                                    "bert-base-uncased folder (or its vocab.txt)")
    else:
        if not Path(kind).expanduser().exists():
            raise FileNotFoundError(f"data.tokenizer: {kind} is not trained, clip-bpe or bert-wordpiece, and no such "
                                    "tokenizer folder exists (for bert-wordpiece: a bert-base-uncased folder holding vocab.txt)")
        tok = load_tokenizer(kind)
    if saved is not None:
        tok.save(saved)
    return tok


def build_transforms(cfg: dict[str, Any], image_size: tuple[int, int]):
    aug = cfg["data"].get("augment", {}) or {}
    h, w = image_size
    train = build_transform(h, w, True, flip=aug.get("flip", True), pad=aug.get("pad", 10),
                            random_crop=aug.get("random_crop", True), erasing=aug.get("erasing", 0.5),
                            erase_fill=aug.get("erase_fill", "mean"))
    test = build_transform(h, w, False)
    return train, test


def build_untrained(cfg: dict[str, Any], dataset: Dataset, device: torch.device | None = None):
    """A config's model as built (`backbone.pretrained` loaded, nothing trained), in eval mode on
    `device` (default CPU), with its tokenizer and test transform: what a zero-shot evaluation
    measures. The modules a checkpoint does not fill start from the config's seed.
    -> (tokenizer, method, test transform)"""
    tokenizer = build_tokenizer(cfg, dataset, None)
    torch.manual_seed(int(cfg.get("seed", 0)))
    method = build_model(cfg, tokenizer, max(dataset.num_train_ids, 1))
    method.to(device or torch.device("cpu")).eval()
    return tokenizer, method, build_transforms(cfg, image_size_of(method))[1]


def build_model(cfg: dict[str, Any], tokenizer: Any, num_classes: int, load_pretrained: bool = True) -> Method:
    """The method named by the config; with `backbone.pretrained` set (and `load_pretrained`), its weights
    are read from that local path (tbps.models.pretrained). Pass False when trained weights follow anyway."""
    b = cfg["backbone"]
    overrides = dict(b.get("overrides") or {})
    if cfg["data"].get("image_size"):
        overrides["image_size"] = tuple(cfg["data"]["image_size"])
    overrides["vocab_size"] = tokenizer.vocab_size
    bcfg = backbone_config(b["name"], **overrides)
    max_len = int(cfg["data"]["max_text_len"])
    if bcfg.context_length < max_len:
        raise ValueError(f"data.max_text_len={max_len} exceeds the backbone's context length {bcfg.context_length}")
    backbone = build_backbone(bcfg)
    m = dict(cfg["method"])
    name = m.pop("name")
    method = build_method(name, m, backbone, num_classes, tokenizer)
    if b.get("pretrained") and load_pretrained:  # a path, or foundation:<name> (a foundation shipped in tbps)
        report = load_pretrained_weights(method, resolve_foundation(b["pretrained"], "backbone.pretrained"),
                                         allow_missing=b.get("pretrained_allow_missing") or (),
                                         trust_pickle=bool(b.get("pretrained_trust_pickle", False)),
                                         pos_interpolation=b.get("pos_interpolation", "bicubic"),
                                         what=f"backbone.pretrained ({b['name']} weights)")
        print(f"pretrained: {report.summary()}")
    return method


def image_size_of(method: Method) -> tuple[int, int]:
    return tuple(method.backbone.cfg.image_size)
