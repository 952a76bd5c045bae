"""CLIP fine-tuning (Radford et al., ICML 2021): the plain baseline text-person-search papers compare to.

One loss, one stage: the symmetric image-text InfoNCE of CLIP on the projected global features,
with CLIP's learnable temperature (logit scale initialised to ln(1 / 0.07), clamped at 100). No
identity loss, no cross-modal module: each caption's positive is its own image only, and every
other pair of the (global) batch is a negative, as in CLIP's pre-training. Retrieval ranks by the
cosine of the global embeddings (the `Method` defaults), so search, export and explain need
nothing from this file beyond training.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import Backbone
from . import register
from .base import Method
from .losses import gather

DEFAULTS: dict[str, Any] = {
    "temperature_init": 0.07,  # CLIP: logit scale starts at ln(1 / 0.07)
    "max_logit_scale": 100.0,  # CLIP clamps exp(logit scale) at 100
}


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: row i's positive is column i, in both directions, averaged.

    In fp32 even under autocast (logits up to 100 x cosine need the mantissa)."""
    with torch.autocast(image_emb.device.type, enabled=False):
        v = F.normalize(image_emb.float(), dim=-1)
        t = F.normalize(text_emb.float(), dim=-1)
        logits = logit_scale.float() * t @ v.t()
        labels = torch.arange(len(t), device=t.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


@register("clip_ft")
class CLIPFineTune(Method):
    defaults = DEFAULTS  # the one source of this method's config keys and their defaults

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        cfg = {**DEFAULTS, **cfg}
        if not 0 < float(cfg["temperature_init"]) or float(cfg["max_logit_scale"]) <= 0:
            raise ValueError(f"clip_ft: temperature_init={cfg['temperature_init']!r} and "
                             f"max_logit_scale={cfg['max_logit_scale']!r} must be positive")
        super().__init__(cfg, backbone, num_classes, tokenizer)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / float(cfg["temperature_init"]))))

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=math.log(float(self.cfg["max_logit_scale"]))).exp()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        tok = batch["tokens"]
        image_emb, _ = self.backbone.encode_image(batch["images"])
        text_emb, _ = self.backbone.encode_text(tok["ids"], tok["attention_mask"], tok.get("eot_index"))
        # every rank scores the whole global batch (features gathered with gradient), as one process would
        itc = clip_loss(gather(image_emb), gather(text_emb), self.logit_scale())
        return {"itc": itc, "loss": itc, "logit_scale": self.logit_scale().detach()}
