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
                candidates: torch.Tensor | None = None, fallback: str = "random",
                never_ids: frozenset[int] = frozenset()) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 rule on `prob` of the candidate tokens, at least one per caption.

    Candidates default to every real, non-special token; special tokens, padding and `never_ids`
    are never masked nor drawn as random replacements. A caption where no candidate was drawn gets
    one: `fallback="random"` picks a random candidate (80/10/10 as the others); `"first"` puts the
    mask token at position 1 (the first word after [bos]), as the official IRRA code does.
    Returns (masked ids, labels) where labels are -100 except at masked positions.
    """
    if fallback not in ("random", "first"):
        raise ValueError(f"unknown masking fallback {fallback!r}; use 'random' or 'first'")
    real = attention_mask.bool()
    for s in set(special_ids) | set(never_ids):
        real &= ids != s
    cand = real if candidates is None else (real & candidates.bool())
    draw = torch.rand(ids.shape, generator=generator) < prob
    chosen = draw & cand
    none = chosen.sum(1) == 0
    first = torch.zeros_like(chosen)
    if fallback == "random":  # a random candidate where none was drawn
        none &= cand.sum(1) > 0
        if none.any():
            scores = torch.rand(ids.shape, generator=generator).masked_fill(~cand, -1.0)
            pick = scores.argmax(1)
            rows = none.nonzero().squeeze(1)
            chosen[rows, pick[rows]] = True
    elif ids.shape[1] > 1:  # position 1 where none was drawn (a real token there)
        first[:, 1] = none & attention_mask[:, 1].bool()
        chosen |= first
    labels = torch.full_like(ids, -100)
    labels[chosen] = ids[chosen]
    action = torch.rand(ids.shape, generator=generator)
    out = ids.clone()
    out[chosen & ((action < 0.8) | first)] = mask_id
    random_pos = chosen & ~first & (action >= 0.8) & (action < 0.9)
    n = int(random_pos.sum())
    if n:
        pool = _replacement_pool(vocab_size, frozenset(special_ids) | frozenset(never_ids) | {mask_id})
        out[random_pos] = pool[torch.randint(len(pool), (n,), generator=generator)]
    return out, labels


def pad_tokens(ids: torch.Tensor, mask: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (or keep) token ids and their attention mask to `length` positions."""
    extra = length - ids.shape[1]
    if extra <= 0:
        return ids, mask
    return (torch.cat([ids, ids.new_full((ids.shape[0], extra), pad_id)], 1),
            torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], 1))
