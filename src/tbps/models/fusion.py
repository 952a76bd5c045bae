"""Cross-modal modules: text tokens query image tokens."""
from __future__ import annotations

import torch
from torch import nn

from .layers import MultiheadAttention, QuickGELU, Transformer


class CrossModalEncoder(nn.Module):
    """IRRA's implicit relation reasoning module: one cross-attention from text tokens to image
    tokens, then a stack of self-attention blocks. Width is the joint embedding width."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.ln_pre_t = nn.LayerNorm(width)
        self.ln_pre_i = nn.LayerNorm(width)
        self.cross_attn = MultiheadAttention(width, heads)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        for block in self.transformer.resblocks:  # IRRA's scaled init keeps the deep residual stream stable
            nn.init.normal_(block.mlp.c_proj.weight, std=(width ** -0.5) * ((2 * layers) ** -0.5))

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor,
                text_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = self.cross_attn(self.ln_pre_t(text_tokens), self.ln_pre_i(image_tokens))
        x = self.transformer(x, key_padding=text_padding)
        return self.ln_post(x)


class MLMHead(nn.Module):
    """dense -> QuickGELU -> LayerNorm -> vocabulary logits (IRRA's `mlm_head`)."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.act = QuickGELU()
        self.ln = nn.LayerNorm(width)
        self.fc = nn.Linear(width, vocab_size)
        nn.init.normal_(self.dense.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(self.fc.weight, std=width ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(self.act(self.dense(x))))
