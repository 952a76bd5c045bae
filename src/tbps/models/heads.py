"""Small output heads shared by the methods: binary matching and BERT-style vocabulary heads.

Parameter names follow BLIP / Hugging Face BERT (`transform.dense`, `transform.LayerNorm`,
`decoder`) so that a pretrained `text_decoder.cls.predictions.*` maps onto `LMHead` by a plain
key rename.
"""
from __future__ import annotations

import torch
from torch import nn


class MatchHead(nn.Linear):
    """Linear(width, 2): logit 0 = "not matched", logit 1 = "matched" (BLIP's `itm_head`)."""

    MATCH = 1

    def __init__(self, width: int) -> None:
        super().__init__(width, 2)
        nn.init.normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)

    def match_logit(self, x: torch.Tensor) -> torch.Tensor:
        """The raw logit of the "matched" class, the re-ranking score of CADA's official code."""
        return self.match_logit_of(self(x))

    def match_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The probability of "matched" (softmax over the two classes), the one place it is computed."""
        return self.match_probability_of(self(x))

    @classmethod
    def match_logit_of(cls, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., cls.MATCH]

    @classmethod
    def match_probability_of(cls, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1)[..., cls.MATCH]


class LMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> vocabulary logits.

    Its own matrix unless the method ties `decoder.weight` to a word-embedding table (CADA's
    `method.tie_lm_head`, as the official decoder); checkpoints then store the tensor under both names.
    """

    def __init__(self, width: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(width, width)
        self.transform.act = nn.GELU()
        self.transform.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.decoder = nn.Linear(width, vocab_size)
        for lin in (self.transform.dense, self.decoder):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transform
        return self.decoder(t.LayerNorm(t.act(t.dense(x))))
