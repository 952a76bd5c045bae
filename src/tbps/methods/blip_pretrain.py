"""BLIP pretraining (Li, Li, Xiong, Hoi, ICML 2022) on the blip layout: the foundation CADA fine-tunes.

Three objectives, no identity labels (in the pretraining corpus every image is its own id):
  itc  image-text contrastive: CLIP's symmetric InfoNCE with a learnable temperature (clip_ft.clip_loss);
  itm  image-text matching on the image-grounded text encoder's [ENC] output, over the positives and,
       per text and per image, one negative sampled from softmax(similarity / temperature) of the
       batch, as BLIP (never the pair's own image id);
  lm   captioning: the causal text decoder, started with [DEC] and reading the image tokens,
       predicts every next token of the caption.
The modules (image-grounded encoder, ITM head, text decoder, LM head) are CADA's, so the model,
its zero-shot two-stage ranking (cosine, then the ITM head on a top K) and its export are those of
the method that fine-tunes from it. BLIP's momentum encoders and queues are not reproduced.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..models import Backbone
from . import register
from .base import Capabilities
from .cada import DEFAULTS as CADA_DEFAULTS
from .cada import CADA
from .clip_ft import clip_loss
from .losses import masked_token_loss

DEFAULTS: dict[str, Any] = {
    "temperature_init": 0.07,   # BLIP/CLIP: a learnable temperature starting at 0.07
    "max_logit_scale": 100.0,   # 1 / temperature is clamped at 100
    "decoder_layers": None,     # text decoder depth; null = the backbone's text depth
    "tie_lm_head": False,       # true: the LM head's matrix is the decoder's word embeddings
    "rerank_k": [32],           # zero-shot two-stage ranking: top-k images re-scored by the ITM head
    "rerank_batch": 512,        # (text, image) pairs per matching forward pass at inference
    "loss_weights": {"itc": 1.0, "itm": 1.0, "lm": 1.0},
}
# The CADA settings this method fixes (BLIP's choices); not config keys of blip_pretrain.
_FIXED = {"hard_negative": "sample", "hard_negative_sim": "cosine", "ara_start_token": "dec",
          "group_pooling": "padding_aware", "attribute_include_person": False}


@register("blip_pretrain")
class BLIPPretrain(CADA):
    defaults = DEFAULTS  # the one source of this method's config keys and their defaults

    def __init__(self, cfg: dict[str, Any], backbone: Backbone, num_classes: int, tokenizer: Any) -> None:
        cfg = {**DEFAULTS, **cfg, "loss_weights": {**DEFAULTS["loss_weights"], **cfg.get("loss_weights", {})}}
        if float(cfg["temperature_init"]) <= 0 or float(cfg["max_logit_scale"]) <= 0:
            raise ValueError(f"blip_pretrain: temperature_init={cfg['temperature_init']!r} and "
                             f"max_logit_scale={cfg['max_logit_scale']!r} must be positive")
        unknown = set(cfg["loss_weights"]) - set(DEFAULTS["loss_weights"])
        if unknown:
            raise ValueError(f"blip_pretrain: loss_weights has unknown parts {sorted(unknown)}; use itc, itm, lm")
        full = {**{k: v for k, v in CADA_DEFAULTS.items() if k != "loss_weights"}, **_FIXED, **cfg}
        super().__init__(full, backbone, num_classes, tokenizer)
        self.cfg = full
        del self.group_head  # CADA's group matching is not part of BLIP
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / float(cfg["temperature_init"]))))

    def capabilities(self) -> Capabilities:
        """CADA's two-stage ranking and maps; no attribute extras (nothing is masked by attribute)."""
        return Capabilities(rerank=True, default_rerank=self.rerank_ks[0] if self.rerank_ks else 0,
                            association_maps=True, index_features=("emb", "tokens"))

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.clamp(max=math.log(float(self.cfg["max_logit_scale"]))).exp()

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        w = self.cfg["loss_weights"]
        glob, rows, image_emb_g, text_emb_g, image_tokens = self._encode_batch(batch)
        ids, mask = batch["tokens"]["ids"], batch["tokens"]["attention_mask"]
        scale = self.logit_scale()
        losses: dict[str, torch.Tensor] = {"logit_scale": scale.detach()}
        losses["itc"] = clip_loss(image_emb_g, text_emb_g, scale)
        losses["itm"] = self._matching_pass(glob["tokens"], glob["pids"], rows, image_emb_g, text_emb_g, image_tokens,
                                            normalize=True, sample_scale=float(scale.detach()),
                                            generator=batch.get("mask_generator"))[0]
        losses["lm"] = self._lm_loss(ids, mask, image_tokens)
        losses["loss"] = sum(float(w[k]) * losses[k] for k in ("itc", "itm", "lm"))
        return losses

    def _lm_loss(self, ids: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of the causal decoder ([DEC] first) over the caption's real tokens."""
        dec_ids = ids.clone()
        dec_ids[:, 0] = self.dec_id
        hidden = self.text_decoder(dec_ids, mask, image_tokens, causal=True)
        chosen = mask[:, 1:].bool()
        logits = self.lm_head(hidden[:, :-1][chosen])
        return masked_token_loss(logits.float(), ids[:, 1:][chosen])
