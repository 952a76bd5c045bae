"""IRRA (Jiang & Ye, CVPR 2023): SDM + ID + implicit relation reasoning (cross-modal MLM)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..models import Backbone
from ..models.fusion import CrossModalEncoder, MLMHead
from . import register
from .base import Method, shard_of
from .losses import gather, id_loss, masked_token_loss, sdm_loss
from .masking import mask_tokens

DEFAULTS: dict[str, Any] = {
    "tau": 0.02,
    # From-scratch switch: learn the temperature as CLIP does (starting at `tau_init`, never below
    # `tau`). A fixed tau = 0.02 suits IRRA's pretrained CLIP start; from random weights it makes
    # early random similarities confidently wrong, and both towers collapse to a constant output.
    "learnable_tau": False,
    "tau_init": 0.07,
    "mlm_prob": 0.15,
    "cross_layers": 4,
    "loss_weights": {"sdm": 1.0, "id": 1.0, "mlm": 1.0},
}


@register("irra")
class IRRA(Method):
    defaults = DEFAULTS  # the one source of this method's config keys and their defaults

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        cfg = {**DEFAULTS, **cfg, "loss_weights": {**DEFAULTS["loss_weights"], **cfg.get("loss_weights", {})}}
        super().__init__(cfg, backbone, num_classes, tokenizer)
        d = backbone.cfg.embed_dim
        self.classifier = nn.Linear(d, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        self.cross_modal = CrossModalEncoder(d, max(1, d // 64), cfg["cross_layers"])
        self.mlm_head = MLMHead(d, tokenizer.vocab_size)
        if cfg["learnable_tau"]:
            self.log_inv_tau = nn.Parameter(torch.tensor(math.log(1.0 / cfg["tau_init"])))

    def temperature(self) -> torch.Tensor | float:
        if not self.cfg["learnable_tau"]:
            return self.cfg["tau"]
        return 1.0 / self.log_inv_tau.clamp(max=math.log(1.0 / self.cfg["tau"])).exp()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        w = self.cfg["loss_weights"]
        bb = self.backbone
        tok = batch["tokens"]
        image_emb, image_tokens = bb.encode_image(batch["images"])
        text_emb, _ = bb.encode_text(tok["ids"], tok["attention_mask"], tok["eot_index"])
        glob, rows = shard_of(batch)  # multi-process: the global batch and this rank's rows
        losses: dict[str, torch.Tensor] = {}
        if w["sdm"]:  # over the global batch (features gathered with gradient)
            losses["sdm"] = sdm_loss(gather(image_emb), gather(text_emb), glob["pids"], self.temperature())
        if w["id"]:
            losses["id"] = id_loss(self.classifier, image_emb.float(), text_emb.float(), batch["pids"])
        if w["mlm"]:
            losses["mlm"] = self._mlm_loss(tok, image_tokens, batch["mask_generator"], glob["tokens"], rows)
        losses["loss"] = sum(w[k] * v for k, v in losses.items())
        return losses

    def _mlm_loss(self, tok: dict[str, torch.Tensor], image_tokens: torch.Tensor, generator: torch.Generator,
                  global_tok: dict[str, torch.Tensor] | None = None, rows: slice = slice(None)) -> torch.Tensor:
        t = self.tokenizer
        g = tok if global_tok is None else global_tok  # masks are drawn for the global batch, rows kept
        ids, labels = mask_tokens(g["ids"].cpu(), g["attention_mask"].cpu(), t.special_ids, t.mask_id,
                                  t.vocab_size, generator, self.cfg["mlm_prob"])
        ids, labels = ids[rows].to(tok["ids"].device), labels[rows].to(tok["ids"].device)
        bb = self.backbone
        text_tokens = bb.text_proj(bb.text(ids, tok["attention_mask"]))
        fused = self.cross_modal(text_tokens, bb.image_proj(image_tokens))
        masked = labels != -100
        logits = self.mlm_head(fused[masked])  # vocabulary head on masked positions only
        return masked_token_loss(logits.float(), labels[masked])
