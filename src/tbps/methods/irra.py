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
from .masking import mask_tokens, pad_tokens

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
    # Official behaviour, an upstream bug kept for reproduction (anosorae/IRRA issue #29): its dataset
    # masks the caption tensor in place, so SDM and ID also encode the MLM-masked caption.
    "global_on_masked_caption": False,
    # tbps: a random candidate where no token was drawn; official: [MASK] at position 1, and token id 0
    # is never masked nor drawn as a random replacement.
    "mlm_masking": "tbps",
    # What the cross-modal transformer sees of padding: mask (a key-padding mask: the MLM loss does not
    # depend on the batch's padding) | none (the batch's trimmed padding, unmasked) | context (padded to
    # the context length, unmasked: the official code).
    "mlm_padding": "mask",
}


@register("irra")
class IRRA(Method):
    defaults = DEFAULTS  # the one source of this method's config keys and their defaults

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        cfg = {**DEFAULTS, **cfg, "loss_weights": {**DEFAULTS["loss_weights"], **cfg.get("loss_weights", {})}}
        for key, allowed in (("mlm_masking", ("tbps", "official")), ("mlm_padding", ("mask", "none", "context"))):
            if cfg[key] not in allowed:
                raise ValueError(f"irra: method.{key}={cfg[key]!r}; use one of {', '.join(allowed)}")
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
        glob, rows = shard_of(batch)  # multi-process: the global batch and this rank's rows
        masked = None
        if w["mlm"] or self.cfg["global_on_masked_caption"]:
            masked = self._masked_caption(tok, batch["mask_generator"], glob["tokens"], rows)
        image_emb, image_tokens = bb.encode_image(batch["images"])
        if self.cfg["global_on_masked_caption"]:  # one pass: its tokens serve the MLM branch too
            text_emb, text_tokens = bb.encode_text(masked["ids"], masked["attention_mask"], tok["eot_index"])
        else:
            text_emb, _ = bb.encode_text(tok["ids"], tok["attention_mask"], tok["eot_index"])
            text_tokens = None
        losses: dict[str, torch.Tensor] = {}
        if w["sdm"]:  # over the global batch (features gathered with gradient)
            losses["sdm"] = sdm_loss(gather(image_emb), gather(text_emb), glob["pids"], self.temperature())
        if w["id"]:
            losses["id"] = id_loss(self.classifier, image_emb.float(), text_emb.float(), batch["pids"])
        if w["mlm"]:
            losses["mlm"] = self._mlm_loss(masked, image_tokens, text_tokens)
        losses["loss"] = sum(w[k] * v for k, v in losses.items())
        return losses

    def _masked_caption(self, tok: dict[str, torch.Tensor], generator: torch.Generator,
                        global_tok: dict[str, torch.Tensor] | None = None, rows: slice = slice(None)
                        ) -> dict[str, torch.Tensor]:
        """The MLM input of this process's rows: {"ids", "labels", "attention_mask"}. Masks are drawn
        for the global batch (padded to the context length first under mlm_padding=context)."""
        t = self.tokenizer
        g = tok if global_tok is None else global_tok
        ids, mask = g["ids"].cpu(), g["attention_mask"].cpu()
        if self.cfg["mlm_padding"] == "context":
            ids, mask = pad_tokens(ids, mask, self.backbone.cfg.context_length, t.pad_id)
        official = self.cfg["mlm_masking"] == "official"
        masked, labels = mask_tokens(ids, mask, t.special_ids, t.mask_id, t.vocab_size, generator,
                                     self.cfg["mlm_prob"], fallback="first" if official else "random",
                                     never_ids=frozenset({0}) if official else frozenset())
        device = tok["ids"].device
        return {"ids": masked[rows].to(device), "labels": labels[rows].to(device),
                "attention_mask": mask[rows].to(device)}

    def _mlm_loss(self, masked: dict[str, torch.Tensor], image_tokens: torch.Tensor,
                  text_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-modal MLM on `masked` (from `_masked_caption`); `text_tokens` are its text-tower
        outputs when already computed."""
        bb = self.backbone
        if text_tokens is None:
            text_tokens = bb.text(masked["ids"], masked["attention_mask"])
        padding = masked["attention_mask"] if self.cfg["mlm_padding"] == "mask" else None
        fused = self.cross_modal(bb.text_proj(text_tokens), bb.image_proj(image_tokens), text_padding=padding)
        labels = masked["labels"]
        chosen = labels != -100
        logits = self.mlm_head(fused[chosen])  # vocabulary head on masked positions only
        return masked_token_loss(logits.float(), labels[chosen])
