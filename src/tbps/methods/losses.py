"""Loss functions shared by the methods. Each takes features and labels, returns a scalar.

Multi-process training (see `tbps.engine.distributed`; the collectives are in `tbps.collectives`): `gather` gives every rank the features of
the whole global batch (with gradient) for the batch-level losses, and `global_mean` turns a local
sum into the share of the global-batch mean that makes the mean over ranks equal to it. With one
process both are the identity and plain division, so single-process results do not change.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..collectives import all_gather_with_grad, all_reduce_sum, get_world_size, is_distributed


def gather(x: torch.Tensor) -> torch.Tensor:
    """This rank's [b, ...] -> the global batch's [N * b, ...], differentiable (identity for one process)."""
    return all_gather_with_grad(x)


def global_mean(total: torch.Tensor, count: torch.Tensor | int, min_count: float | None = None) -> torch.Tensor:
    """`total / count` for one process. Under N processes `N * total / (count summed over ranks)`:
    DDP averages the ranks' gradients, so each rank contributes its sum over the global count."""
    if not is_distributed():
        if min_count is not None and isinstance(count, torch.Tensor):
            count = count.clamp(min=min_count)
        return total / count
    count = torch.as_tensor(count, device=total.device, dtype=torch.float32)
    count = all_reduce_sum(count)
    if min_count is not None:
        count = count.clamp(min=min_count)
    return total * get_world_size() / count


def _fp32(t: torch.Tensor):
    """Autocast off: similarity logits at temperature 0.02 need fp32 (bf16 steps would be 0.2 logits)."""
    return torch.autocast(t.device.type, enabled=False)


def identity_targets(pids: torch.Tensor, other_pids: torch.Tensor | None = None) -> torch.Tensor:
    """q_ij = 1[y_i == y_j] / sum_k 1[y_i == y_k]: the identity-normalised label distribution."""
    other_pids = pids if other_pids is None else other_pids
    same = (pids[:, None] == other_pids[None, :]).float()
    return same / same.sum(1, keepdim=True)


def sdm_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, pids: torch.Tensor, tau: float = 0.02,
             eps: float = 1e-8) -> torch.Tensor:
    """IRRA's similarity distribution matching: KL(softmax(S) || q) in both directions.

    Computed in fp32 even under autocast: at tau = 0.02 bf16's 8-bit mantissa would quantise
    cosines near 1 into steps of 0.2 logits.
    """
    with _fp32(image_emb):
        v = F.normalize(image_emb.float(), dim=-1)
        t = F.normalize(text_emb.float(), dim=-1)
        return sdm_from_logits((t @ v.t()) / tau, pids, eps)


def sdm_from_logits(logits_t2i: torch.Tensor, pids: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SDM on any [B, B] text-to-image logit matrix (cosine/tau or -distance/tau)."""
    q = identity_targets(pids)
    with _fp32(logits_t2i):
        logits_t2i = logits_t2i.float()
        loss = 0.0
        for logits in (logits_t2i, logits_t2i.t()):
            p = logits.softmax(1)
            loss = loss + (p * (F.log_softmax(logits, 1) - torch.log(q + eps))).sum(1).mean()
        return loss


def id_loss(classifier: torch.nn.Module, image_emb: torch.Tensor, text_emb: torch.Tensor,
            pids: torch.Tensor) -> torch.Tensor:
    """Identity classification of both modalities with one shared linear classifier."""
    return (F.cross_entropy(classifier(image_emb), pids) + F.cross_entropy(classifier(text_emb), pids)) / 2


def masked_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over masked positions only; `logits` are [N_masked, V], labels [N_masked].

    Under multi-process training the mean is over the masked tokens of the global batch."""
    if not is_distributed():
        if labels.numel() == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels)
    total = F.cross_entropy(logits, labels, reduction="sum") if labels.numel() else logits.sum() * 0.0
    return global_mean(total, labels.numel(), min_count=1)
