"""Loss functions shared by the methods. Each takes features and labels, returns a scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F


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
    v = F.normalize(image_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    return sdm_from_logits((t @ v.t()) / tau, pids, eps)


def sdm_from_logits(logits_t2i: torch.Tensor, pids: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SDM on any [B, B] text-to-image logit matrix (cosine/tau or -distance/tau)."""
    q = identity_targets(pids)
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
    """Cross-entropy over masked positions only; `logits` are [N_masked, V], labels [N_masked]."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)
