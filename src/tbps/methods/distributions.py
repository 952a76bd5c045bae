"""Diagonal Gaussian embeddings: closed-form distances, reparameterised samples, KL to N(0, I).

UCA (METHODS.md section 4) maps every image and caption to N(mu, diag(sigma^2)). Everything here
runs in float32 whatever the surrounding autocast says: distances between nearly identical unit
vectors are small differences of large terms, which bf16 rounds away.

Distances between a batch of N and a batch of M Gaussians are built from matrix products and
squared norms ([N, M] outputs, never [N, M, D] intermediates), so they scale to whole galleries:

    W2^2(i, j)  = ||mu_i - mu_j||^2 + ||sigma_i - sigma_j||^2
    CSD(i, j)   = ||mu_i - mu_j||^2 + tr S_i + tr S_j      (= E ||x_i - x_j||^2, x ~ N_i, N_j)
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

DISTANCES = ("w2", "csd")


def fp32(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context with autocast switched off on `device`, for distribution arithmetic."""
    dev_type = torch.device(device).type
    return torch.autocast(dev_type, enabled=False)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a_i - b_j||^2 for all pairs as ||a||^2 + ||b||^2 - 2 a.b, clamped at 0 (rounding)."""
    d = a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None, :] - 2.0 * (a @ b.t())
    return d.clamp_min(0.0)


def w2_distance(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Squared 2-Wasserstein distance between diagonal Gaussians, [N, M]."""
    mu1, mu2 = mu1.float(), mu2.float()
    s1, s2 = (0.5 * logvar1.float()).exp(), (0.5 * logvar2.float()).exp()
    return _sq_dist(mu1, mu2) + _sq_dist(s1, s2)


def csd_distance(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Expected squared distance between samples of two diagonal Gaussians, [N, M]."""
    mu1, mu2 = mu1.float(), mu2.float()
    tr1, tr2 = logvar1.float().exp().sum(-1), logvar2.float().exp().sum(-1)
    return _sq_dist(mu1, mu2) + tr1[:, None] + tr2[None, :]


def pairwise_distance(kind: str, mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                      logvar2: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """`kind` ("w2" or "csd") for every (row of 1, row of 2) pair, in fp32.

    With `chunk_size`, rows of the first set are processed that many at a time, so a large
    query set against a large gallery only holds one chunk's temporaries at once.
    """
    if kind not in DISTANCES:
        raise ValueError(f"unknown distance {kind!r}; use one of {DISTANCES}")
    fn = w2_distance if kind == "w2" else csd_distance
    with fp32(mu1.device):
        if chunk_size is None or mu1.shape[0] <= chunk_size:
            return fn(mu1, logvar1, mu2, logvar2)
        return torch.cat([fn(mu1[i:i + chunk_size], logvar1[i:i + chunk_size], mu2, logvar2)
                          for i in range(0, mu1.shape[0], chunk_size)])


def paired_distance(kind: str, mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor,
                    logvar2: torch.Tensor) -> torch.Tensor:
    """`kind` between row i of set 1 and row i of set 2 (aligned pairs), [N], in fp32."""
    if kind not in DISTANCES:
        raise ValueError(f"unknown distance {kind!r}; use one of {DISTANCES}")
    with fp32(mu1.device):
        d = (mu1.float() - mu2.float()).pow(2).sum(-1)
        if kind == "w2":
            return d + ((0.5 * logvar1.float()).exp() - (0.5 * logvar2.float()).exp()).pow(2).sum(-1)
        return d + logvar1.float().exp().sum(-1) + logvar2.float().exp().sum(-1)


def sample_points(mu: torch.Tensor, logvar: torch.Tensor, k: int, generator: torch.Generator,
                  offset: int = 0, total: int | None = None) -> torch.Tensor:
    """K reparameterised samples per item, projected back to the unit sphere: [B, K, D].

    The noise is drawn from `generator` (a CPU generator) and moved to the device, so the same
    seed gives the same samples on any device and a resumed run sees the same noise. Under
    multi-process training the B items are rows `offset..` of a global batch of `total`: the
    noise is drawn for all `total` rows (as one process would) and these rows are kept.
    """
    total = mu.shape[0] if total is None else int(total)
    eps = torch.randn((total, k, mu.shape[1]), generator=generator, dtype=torch.float32)
    eps = eps[offset:offset + mu.shape[0]].to(mu.device)
    with fp32(mu.device):
        sigma = (0.5 * logvar.float()).exp()
        return F.normalize(mu.float()[:, None, :] + sigma[:, None, :] * eps, dim=-1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over dimensions, averaged over items."""
    with fp32(mu.device):
        mu, logvar = mu.float(), logvar.float()
        kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(-1)
        return kl.mean()


def uncertainty(logvar: torch.Tensor, kind: str = "mean_var") -> torch.Tensor:
    """Per-item uncertainty: mean sigma^2 over dimensions ("mean_var") or tr S ("trace")."""
    var = logvar.float().exp()
    if kind == "mean_var":
        return var.mean(-1)
    if kind == "trace":
        return var.sum(-1)
    raise ValueError(f"unknown uncertainty {kind!r}; use mean_var or trace")
