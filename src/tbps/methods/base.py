"""What every method provides to the engine: losses for a batch, and features + scores for evaluation."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Backbone


def shard_of(batch: dict[str, Any]) -> tuple[dict[str, Any], slice]:
    """(the global batch, this process's rows in it).

    Under multi-process training each rank's batch holds its B / N samples plus, under "shard",
    the token ids, pids and collate extras of the whole global batch (cheap integers), so random
    token masking and sampling are drawn for the global batch exactly as one process would and
    each rank keeps its own rows. With one process: (batch, every row).
    """
    shard = batch.get("shard")
    if shard is None:
        return batch, slice(None)
    return shard["global"], slice(shard["offset"], shard["offset"] + shard["size"])


class Method(nn.Module):
    """A composition of losses over a backbone.

    The engine calls `forward(batch)` for training (a dict with a scalar "loss" and its parts),
    `encode_images` / `encode_texts` once per gallery image and query, and `score` to turn the
    collected features into one similarity matrix per reported task (e.g. "t2i", "t2i-rerank").
    """


    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.num_classes = num_classes
        self.tokenizer = tokenizer

    def new_parameter_names(self) -> set[str]:
        """Parameters outside the (possibly pretrained) backbone, which get the larger learning rate."""
        return {n for n, _ in self.named_parameters() if not n.startswith("backbone.")}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, _ = self.backbone.encode_image(images)
        return {"emb": F.normalize(emb.float(), dim=-1)}

    @torch.no_grad()
    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        emb, _ = self.backbone.encode_text(tokens["ids"], tokens["attention_mask"], tokens.get("eot_index"))
        return {"emb": F.normalize(emb.float(), dim=-1)}

    @torch.no_grad()
    def score(self, text_feats: dict[str, torch.Tensor], image_feats: dict[str, torch.Tensor],
              **kwargs: Any) -> dict[str, torch.Tensor]:
        """Text-to-image similarity [Q, G] per task; the default is cosine of the global embeddings."""
        return {"t2i": text_feats["emb"] @ image_feats["emb"].t()}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    # Optional hooks. The engine calls them when a method defines them (they are not defined here):
    #
    # collate_extras(captions: list[str], tokens: TokenBatch) -> dict
    #     extra per-caption tensors added to every training batch (e.g. attribute-token flags from
    #     tbps.data.attributes, computed from the tokenizer's character offsets).
    # on_validation(text_feats, image_feats, split) -> None
    #     called with the validation features before scoring, each time the trainer validates and
    #     before the best checkpoint is written (e.g. fitting a calibration stored in buffers).
    # extra_report(text_feats, image_feats, split, scores, out_dir) -> dict
    #     extra evaluation results (JSON-ready) and files under out_dir (may be None), reported by
    #     `tbps eval` beside the ranking metrics.
