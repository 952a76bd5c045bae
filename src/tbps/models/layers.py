"""Transformer building blocks shared by every encoder.

Parameter names follow OpenAI CLIP (`in_proj_weight`, `out_proj`, `ln_1`, `mlp.c_fc`) for the
pre-LN blocks and Hugging Face BERT / BLIP (`attention.self.query`, `crossattention`,
`intermediate`, `output`) for the post-LN blocks, so that pretrained checkpoints load by a plain
key map instead of surgery.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """CLIP's GELU approximation; the OpenAI weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; use 'gelu' or 'quick_gelu'")


def padding_to_bias(key_padding: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, Lk] True-for-real-token mask -> additive [B, 1, 1, Lk] bias for SDPA."""
    if key_padding is None:
        return None
    bias = torch.zeros(key_padding.shape, dtype=dtype, device=key_padding.device)
    bias.masked_fill_(~key_padding.bool(), torch.finfo(dtype).min)
    return bias[:, None, None, :]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None = None,
           causal: bool = False, return_weights: bool = False,
           dropout: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention over [B, h, L, d] heads with an optional key padding mask and causal mask, and
    `dropout` on the attention probabilities (BERT's; the caller passes 0 outside training).

    Uses the fused SDPA kernel unless the caller needs the attention probabilities
    (association maps), in which case the explicit softmax path returns them.
    """
    Lq, Lk = q.shape[2], k.shape[2]
    bias = padding_to_bias(key_padding, q.dtype)
    if causal and (bias is not None or return_weights):
        future = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).triu(1)
        causal_bias = torch.zeros(Lq, Lk, dtype=q.dtype, device=q.device).masked_fill_(future, torch.finfo(q.dtype).min)
        bias = causal_bias if bias is None else bias + causal_bias
        causal = False
    if return_weights:
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        weights = (scores if bias is None else scores + bias).softmax(-1)
        return (F.dropout(weights, dropout) if dropout > 0 else weights) @ v, weights
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, dropout_p=dropout), None


class MultiheadAttention(nn.Module):
    """Self- or cross-attention with a packed input projection (OpenAI layout) and SDPA kernels."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.kv_width = kv_width or width
        if self.kv_width == width:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        else:  # cross-attention to a wider/narrower memory keeps separate projections
            self.q_proj_weight = nn.Parameter(torch.empty(width, width))
            self.kv_proj_weight = nn.Parameter(torch.empty(2 * width, self.kv_width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.width = width
        for name, p in self.named_parameters(recurse=False):
            if name.endswith("weight"):
                nn.init.xavier_uniform_(p)

    def _project(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
        w, b = self.width, self.in_proj_bias
        if self.kv_width == self.width:
            qw, kw, vw = self.in_proj_weight.split(w)
        else:
            qw = self.q_proj_weight
            kw, vw = self.kv_proj_weight.split(w)
        qb, kb, vb = b.split(w)
        return F.linear(x, qw, qb), F.linear(memory, kw, kb), F.linear(memory, vw, vb)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        key_padding: torch.Tensor | None = None,
        causal: bool = False,
        return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        memory = x if memory is None else memory
        B, Lq, _ = x.shape
        Lk = memory.shape[1]
        q, k, v = self._project(x, memory)
        h = self.heads
        q = q.view(B, Lq, h, -1).transpose(1, 2)
        k = k.view(B, Lk, h, -1).transpose(1, 2)
        v = v.view(B, Lk, h, -1).transpose(1, 2)
        out, weights = attend(q, k, v, key_padding, causal, return_weights)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, self.width))
        return (out, weights) if return_weights else out


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.act = activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block (CLIP, ViT): x + attn(ln(x)), then x + mlp(ln(x)); optional cross-attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, act: str = "quick_gelu",
                 cross_width: int | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = MultiheadAttention(width, heads)
        if cross_width is not None:
            self.ln_cross = nn.LayerNorm(width, eps=eps)
            self.cross_attn = MultiheadAttention(width, heads, kv_width=cross_width)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, int(width * mlp_ratio), act)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None, causal: bool = False,
                memory: torch.Tensor | None = None, memory_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_padding=key_padding, causal=causal)
        if memory is not None:
            x = x + self.cross_attn(self.ln_cross(x), memory, key_padding=memory_padding)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of pre-LN blocks (OpenAI name: `resblocks`)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, act: str = "quick_gelu",
                 cross_width: int | None = None, eps: float = 1e-5, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.width = width
        self.grad_checkpointing = grad_checkpointing
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act, cross_width, eps) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None, causal: bool = False,
                memory: torch.Tensor | None = None, memory_padding: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, key_padding, causal, memory, memory_padding,
                                                      use_reentrant=False)
            else:
                x = block(x, key_padding, causal, memory, memory_padding)
        return x
