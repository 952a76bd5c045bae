"""Text encoders: CLIP's causal transformer and BLIP's BERT with optional cross-attention.

Both return every token's feature; the global feature is taken by the backbone (CLIP: the EOT
position; BERT: position 0, [CLS] or [ENC]).
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import Transformer, activation, attend

PAD_ID = 0  # [PAD] in bert-base-uncased and in tbps's trained WordPiece vocabularies


class CausalTextTransformer(nn.Module):
    """OpenAI CLIP text tower: token + position embedding, causal pre-LN transformer, final LN."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int,
                 act: str = "quick_gelu", grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.context_length = context_length
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, act=act, grad_checkpointing=grad_checkpointing)
        self.ln_final = nn.LayerNorm(width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] -> [B, L, width]. Causal attention means real tokens never see the padding after them."""
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"text length {L} exceeds the context length {self.context_length}")
        x = self.token_embedding(ids) + self.positional_embedding[:L]
        return self.ln_final(self.transformer(x, causal=True))


class BertAttention(nn.Module):
    """Post-LN attention sub-layer with HF/BLIP names: self.{query,key,value}, output.{dense,LayerNorm}."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None, eps: float = 1e-12,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.self = _QKV(width, heads, kv_width or width, dropout)
        self.output = _DenseNorm(width, width, eps, dropout)

    def forward(self, x, memory=None, key_padding=None, causal=False, return_weights=False):
        out = self.self(x, memory, key_padding, causal, return_weights)
        if return_weights:
            out, weights = out
            return self.output(out, x), weights
        return self.output(out, x)


class _QKV(nn.Module):
    def __init__(self, width: int, heads: int, kv_width: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def forward(self, x, memory, key_padding, causal, return_weights):
        memory = x if memory is None else memory
        B, Lq, W = x.shape
        h = self.heads
        q = self.query(x).view(B, Lq, h, -1).transpose(1, 2)
        k = self.key(memory).view(B, memory.shape[1], h, -1).transpose(1, 2)
        v = self.value(memory).view(B, memory.shape[1], h, -1).transpose(1, 2)
        out, weights = attend(q, k, v, key_padding, causal, return_weights, self.dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, Lq, W)
        return (out, weights) if return_weights else out


class _DenseNorm(nn.Module):
    """dense -> dropout -> residual add -> LayerNorm (BERT's post-LN output sub-layer)."""

    def __init__(self, in_width: int, width: int, eps: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = _dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertLayer(nn.Module):
    def __init__(self, width: int, heads: int, intermediate: int, cross_width: int | None, act: str = "gelu",
                 eps: float = 1e-12, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = BertAttention(width, heads, eps=eps, dropout=dropout)
        self.crossattention = (BertAttention(width, heads, kv_width=cross_width, eps=eps, dropout=dropout)
                               if cross_width else None)
        self.intermediate = nn.Sequential()
        self.intermediate.dense = nn.Linear(width, intermediate)
        self.intermediate.act = activation(act)
        self.output = _DenseNorm(intermediate, width, eps, dropout)

    def forward(self, x, key_padding=None, causal=False, memory=None, memory_padding=None, return_weights=False):
        x = self.attention(x, key_padding=key_padding, causal=causal)
        weights = None
        if memory is not None:
            if self.crossattention is None:
                raise ValueError("this text model has no cross-attention layers; it cannot read image tokens")
            x = self.crossattention(x, memory, memory_padding, return_weights=return_weights)
            if return_weights:
                x, weights = x
        x = self.output(self.intermediate(x), x)
        return (x, weights) if return_weights else x


class BertTextModel(nn.Module):
    """BLIP's text transformer (BERT, post-LN) whose layers may carry cross-attention to image tokens.

    Uni-modal mode (no image tokens) skips cross-attention, so the same weights give the text
    embedding and, with image tokens, the image-grounded encoding. `causal=True` turns it into
    the decoder used for captioning / masked-attribute prediction. `dropout` acts as BERT's
    hidden_dropout_prob and attention_probs_dropout_prob (0.1 in BLIP), in training mode only. The
    [PAD] row (id 0) of the word embeddings is a padding index, as in BLIP: it never gets a gradient.
    """

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int,
                 cross_width: int | None = None, mlp_ratio: float = 4.0, eps: float = 1e-12,
                 grad_checkpointing: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.context_length = context_length
        self.width = width
        self.grad_checkpointing = grad_checkpointing
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab_size, width, padding_idx=PAD_ID)
        self.embeddings.position_embeddings = nn.Embedding(context_length, width)
        self.embeddings.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.embeddings.dropout = _dropout(dropout)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            BertLayer(width, heads, int(width * mlp_ratio), cross_width, eps=eps, dropout=dropout)
            for _ in range(layers)
        )
        self.apply(_bert_init)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image_tokens: torch.Tensor | None = None, image_padding: torch.Tensor | None = None,
                causal: bool = False, return_cross_weights: bool = False):
        """[B, L] -> [B, L, width] (and, if asked, each layer's cross-attention [B, heads, L, P])."""
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"text length {L} exceeds the context length {self.context_length}")
        pos = torch.arange(L, device=ids.device)
        e = self.embeddings
        x = e.dropout(e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(pos)))
        all_weights = []
        for layer in self.encoder.layer:
            if return_cross_weights:
                x, w = layer(x, attention_mask, causal, image_tokens, image_padding, return_weights=True)
                all_weights.append(w)
            elif self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, attention_mask, causal, image_tokens, image_padding,
                                                      use_reentrant=False)
            else:
                x = layer(x, attention_mask, causal, image_tokens, image_padding)
        return (x, all_weights) if return_cross_weights else x


def _dropout(p: float) -> nn.Module:
    """nn.Dropout, or nothing at all when p = 0 (no random draws, no copy)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def _bert_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
