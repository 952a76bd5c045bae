"""`tbps export RUN_DIR --onnx OUT_DIR`: the image and text encoders as ONNX graphs.

    image_encoder.onnx   images float32 [B, 3, H, W] (resized, normalised; see export.json)
                         -> every feature the method's `encode_images` returns: emb [B, D]
                         (L2-normalised), + e.g. logvar [B, D] (Gaussian embeddings) or the patch
                         tokens a re-ranking head reads (float16)
    text_encoder.onnx    ids int64 [B, L], attention_mask bool [B, L] (right-padded, any L up to
                         the context length) -> emb [B, D], + e.g. logvar [B, D]
    tokenizer/           the run's tokenizer (`tokenizers` JSON), to make `ids` outside tbps
    export.json          shapes, preprocessing (size, mean, std), model identity, and the largest
                         difference between ONNX Runtime and torch measured at export

The TorchScript-based exporter is used (fast, dynamic batch and text length); the graphs are
checked with ONNX Runtime against torch on random images and real captions when it is installed.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..utils import atomic_write_json

OPSET = 17
_CHECK_CAPTIONS = ["a woman in a red coat with a black backpack and white sneakers",
                   "a man wearing a blue shirt", "person"]


class ImageEncoder(nn.Module):
    def __init__(self, method: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.method, self.keys = method, keys

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.method.encode_images(images)
        return tuple(f[k] for k in self.keys)


class TextEncoder(nn.Module):
    def __init__(self, method: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.method, self.keys = method, keys

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.method.encode_texts({"ids": ids, "attention_mask": attention_mask})
        return tuple(f[k] for k in self.keys)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], opset: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)


def export_onnx(run_path: str | Path, out_dir: str | Path, checkpoint: str | None = None, opset: int = OPSET,
                check: bool = True) -> dict[str, Any]:
    from ..data.loader import tokens_to_dict
    from ..engine.runs import load_run
    from .identity import model_identity

    run = load_run(run_path, checkpoint, device="cpu")
    method = run.method.float().eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    h, w = (int(x) for x in method.backbone.cfg.image_size)
    images = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_keys = list(method.encode_images(images).keys())
        tb = tokens_to_dict(run.tokenizer.encode(_CHECK_CAPTIONS[:2], run.max_len))
        text_probe = method.encode_texts({"ids": tb["ids"], "attention_mask": tb["attention_mask"]})
    # per-text feature vectors only (a method may also return token ids or masks for its re-ranker)
    text_keys = [k for k in text_probe if text_probe[k].is_floating_point()]
    img_dyn = {"images": {0: "batch"}, **{k: {0: "batch"} for k in image_keys}}
    txt_dyn = {"ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
               **{k: {0: "batch"} for k in text_keys}}
    _export(ImageEncoder(method, image_keys), (images,), out / "image_encoder.onnx", ["images"], image_keys,
            img_dyn, opset)
    _export(TextEncoder(method, text_keys), (tb["ids"], tb["attention_mask"]), out / "text_encoder.onnx",
            ["ids", "attention_mask"], text_keys, txt_dyn, opset)
    tok_src = Path(run.run_dir) / "tokenizer"
    if tok_src.is_dir():
        shutil.copytree(tok_src, out / "tokenizer", dirs_exist_ok=True)
    tf = run.test_transform()
    meta: dict[str, Any] = {
        "method": method.name, "model": model_identity(run), "opset": opset,
        "image_encoder": {"file": "image_encoder.onnx", "inputs": {"images": ["batch", 3, h, w]},
                          "outputs": {k: list(v.shape[1:]) for k, v in method.encode_images(images).items()}},
        "text_encoder": {"file": "text_encoder.onnx",
                         "inputs": {"ids": ["batch", "length"], "attention_mask": ["batch", "length"]},
                         "outputs": {k: list(text_probe[k].shape[1:]) for k in text_keys},
                         "max_length": int(run.max_len), "tokenizer": "tokenizer/tokenizer.json",
                         "note": "right-padded ids with [bos] ... [eos]; any length up to max_length"},
        "preprocess": {"resize": [h, w], "interpolation": "bicubic", "scale": 1 / 255,
                       "mean": list(tf.mean), "std": list(tf.std), "layout": "NCHW, RGB"},
    }
    if check:
        meta["check"] = check_onnx(out, run)
    atomic_write_json(out / "export.json", meta)
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "check": meta.get("check")}


@torch.no_grad()
def check_onnx(out: Path, run: Any, batch: int = 3) -> dict[str, Any]:
    """Max |ONNX Runtime - torch| per output, on a batch size and text length unlike the export's."""
    import onnxruntime as ort

    from ..data.loader import tokens_to_dict

    method = run.method
    h, w = method.backbone.cfg.image_size
    images = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))
    tb = tokens_to_dict(run.tokenizer.encode(_CHECK_CAPTIONS[:batch], run.max_len))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    result: dict[str, Any] = {}
    for name, feed, ref in (
        ("image_encoder", {"images": images.numpy()}, method.encode_images(images)),
        ("text_encoder", {"ids": tb["ids"].numpy(), "attention_mask": tb["attention_mask"].numpy()},
         method.encode_texts({"ids": tb["ids"], "attention_mask": tb["attention_mask"]})),
    ):
        sess = ort.InferenceSession(str(out / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        got = sess.run(names, feed)
        result[name] = {k: float(np.abs(g.astype(np.float32) - ref[k].float().numpy()).max())
                        for k, g in zip(names, got)}
    return result
