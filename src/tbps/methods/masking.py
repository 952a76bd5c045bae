"""Token masking for the reconstruction objectives (MLM in IRRA, attribute masking later)."""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=8)
def _replacement_pool(vocab_size: int, excluded: frozenset[int]) -> torch.Tensor:
    """Ids a masked token may be swapped for (BERT's random 10%): every id but the special ones."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in excluded if 0 <= i < vocab_size]] = False
    return keep.nonzero().squeeze(1)


def mask_tokens(ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: set[int], mask_id: int,
                vocab_size: int, generator: torch.Generator, prob: float = 0.15,
                candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 rule on `prob` of the candidate tokens, at least one per caption.

    Candidates default to every real, non-special token; special tokens and padding are never
    masked. Returns (masked ids, labels) where labels are -100 except at masked positions.
    """
    real = attention_mask.bool()
    for s in special_ids:
        real &= ids != s
    cand = real if candidates is None else (real & candidates.bool())
    draw = torch.rand(ids.shape, generator=generator) < prob
    chosen = draw & cand
    # at least one masked token per caption that has a candidate: pick one at random where none was drawn
    none = (chosen.sum(1) == 0) & (cand.sum(1) > 0)
    if none.any():
        scores = torch.rand(ids.shape, generator=generator).masked_fill(~cand, -1.0)
        pick = scores.argmax(1)
        rows = none.nonzero().squeeze(1)
        chosen[rows, pick[rows]] = True
    labels = torch.full_like(ids, -100)
    labels[chosen] = ids[chosen]
    action = torch.rand(ids.shape, generator=generator)
    out = ids.clone()
    out[chosen & (action < 0.8)] = mask_id
    random_pos = chosen & (action >= 0.8) & (action < 0.9)
    n = int(random_pos.sum())
    if n:
        pool = _replacement_pool(vocab_size, frozenset(special_ids) | {mask_id})
        out[random_pos] = pool[torch.randint(len(pool), (n,), generator=generator)]
    return out, labels
