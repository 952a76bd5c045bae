"""Retrieval metrics for text-to-image person search (R@k, mAP, mINP).

The published protocol (CUHK-PEDES, ICFG-PEDES, RSTPReid) ranks the *whole*
gallery for every text query and counts every gallery image of the query's
identity as a positive: no camera filtering, nothing removed.

``rank_metrics`` never materialises the full ``Q x G`` argsort. For each query
it only needs the ranks of its positives, and the rank of a positive ``p`` with
score ``s_p`` in a stable descending sort is::

    rank(p) = 1 + #{g : s_g > s_p} + #{g < p : s_g == s_p}

The first count is obtained for all positives of a chunk of queries at once by
binary-searching every gallery score among the (few) positive scores of its
query and histogramming the bucket indices. The second count (ties) is only
evaluated for positives whose score actually occurs more than once in the row.
Work is ``O(Q * G * log P)`` and peak extra memory ``O(chunk_size * G)``
instead of the ``O(Q * G)`` int64 indices of a full argsort.

``reference_rank_metrics`` is the plain full-sort implementation, kept for
tests and benchmarks. ``effective_rank`` measures how many directions an embedding uses
(a dimensional collapse shows as a rank of a few units out of hundreds).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["rank_metrics", "reference_rank_metrics", "format_metrics_table"]

_TABLE_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP")


# --------------------------------------------------------------------------- #
# input handling
# --------------------------------------------------------------------------- #
def _as_similarity(similarity: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Return the similarity as a 2-D torch tensor without copying when possible."""
    if isinstance(similarity, np.ndarray):
        sim = torch.from_numpy(similarity)
    elif isinstance(similarity, torch.Tensor):
        sim = similarity.detach()
    else:
        raise TypeError(f"similarity must be a torch.Tensor or numpy array, got {type(similarity).__name__}")
    if sim.dim() != 2:
        raise ValueError(f"similarity must be 2-D [num_queries, num_gallery], got shape {tuple(sim.shape)}")
    if sim.is_complex():
        raise TypeError("similarity must be real-valued")
    return sim


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores are compared in float32 (half types upcast) or float64 (float64/int input)."""
    if dtype in (torch.float16, torch.bfloat16, torch.float32):
        return torch.float32
    return torch.float64


def _as_pids(
    query_pids: Any, gallery_pids: Any, num_queries: int, num_gallery: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert identity labels to int64 tensors on ``device``.

    Integer labels are used as they are; any other labels (strings, objects) are
    mapped to consistent integer codes so they can be compared on the device.
    """

    def to_numpy(pids: Any) -> np.ndarray:
        if isinstance(pids, torch.Tensor):
            return pids.detach().cpu().numpy()
        return np.asarray(pids)

    if isinstance(query_pids, torch.Tensor) and isinstance(gallery_pids, torch.Tensor) and not (
        query_pids.is_floating_point() or gallery_pids.is_floating_point()
    ):
        q = query_pids.detach().reshape(-1).to(device=device, dtype=torch.int64)
        g = gallery_pids.detach().reshape(-1).to(device=device, dtype=torch.int64)
    else:
        qn, gn = to_numpy(query_pids).reshape(-1), to_numpy(gallery_pids).reshape(-1)
        if qn.dtype.kind in "iub" and gn.dtype.kind in "iub":
            qn, gn = qn.astype(np.int64), gn.astype(np.int64)
        else:
            if qn.dtype.kind == "f" or gn.dtype.kind == "f":
                both = np.concatenate([qn.astype(np.float64), gn.astype(np.float64)])
                if not np.all(np.isfinite(both)) or not np.all(both == np.round(both)):
                    raise ValueError("pids must be integers (or strings); got non-integral floats")
            _, codes = np.unique(np.concatenate([qn, gn]), return_inverse=True)
            codes = codes.reshape(-1).astype(np.int64)
            qn, gn = codes[: len(qn)], codes[len(qn) :]
        q = torch.from_numpy(np.ascontiguousarray(qn)).to(device)
        g = torch.from_numpy(np.ascontiguousarray(gn)).to(device)
    if q.numel() != num_queries:
        raise ValueError(f"query_pids has {q.numel()} entries but similarity has {num_queries} rows")
    if g.numel() != num_gallery:
        raise ValueError(f"gallery_pids has {g.numel()} entries but similarity has {num_gallery} columns")
    return q, g


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if any(k < 1 for k in out):
        raise ValueError(f"ks must be positive integers, got {tuple(ks)}")
    return out


def _raise_missing_positives(num_pos: torch.Tensor) -> None:
    """Published protocols never contain a query without a positive; refuse to guess."""
    missing = torch.nonzero(num_pos == 0).flatten()
    if missing.numel():
        first = missing[:10].tolist()
        more = ", ..." if missing.numel() > 10 else ""
        raise ValueError(
            f"{missing.numel()} of {num_pos.numel()} queries have no positive in the gallery "
            f"(query indices {', '.join(map(str, first))}{more}); "
            "check that query and gallery pids use the same labelling"
        )


def _result(
    hits: dict[int, float], ap_sum: float, inp_sum: float, num_queries: int
) -> dict[str, float]:
    out: dict[str, float] = {f"R{k}": 100.0 * v / num_queries for k, v in hits.items()}
    out["mAP"] = 100.0 * ap_sum / num_queries
    out["mINP"] = 100.0 * inp_sum / num_queries
    out["num_queries"] = num_queries
    return out


# --------------------------------------------------------------------------- #
# chunked, sort-free implementation
# --------------------------------------------------------------------------- #
@torch.no_grad()
def rank_metrics(
    similarity: torch.Tensor | np.ndarray,
    query_pids: Any,
    gallery_pids: Any,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 256,
) -> dict[str, float]:
    """Text-to-image retrieval metrics without holding a full ``Q x G`` argsort.

    Args:
        similarity: ``[Q, G]`` scores, higher = more similar (torch or numpy;
            float16/bfloat16 rows are upcast to float32 one chunk at a time).
        query_pids: ``Q`` identity labels of the queries (ints or strings).
        gallery_pids: ``G`` identity labels of the gallery images.
        ks: cut-offs for Rank-k.
        chunk_size: queries processed at once; extra memory is about
            ``12 * chunk_size * G`` bytes (60 MiB for 256 x 20k).

    Returns:
        ``{"R1", "R5", "R10", "mAP", "mINP"}`` in percent (one ``R{k}`` per
        entry of ``ks``) plus ``"num_queries"``.

    Protocol: each row ranks the whole gallery by descending score; every
    gallery item with the query's pid is a positive. **Ties are broken by
    gallery index: among equal scores the lower index ranks first** (exactly a
    stable descending sort), so results are deterministic.
    AP = mean over positives of (positives at or above its rank) / rank;
    INP = #positives / rank of the last positive.

    Raises:
        ValueError: if any query has no positive in the gallery, if the shapes
            disagree, or if the similarity contains NaN.
    """
    sim = _as_similarity(similarity)
    ks = _check_ks(ks)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_q, num_g = sim.shape
    device = sim.device
    qp, gp = _as_pids(query_pids, gallery_pids, num_q, num_g, device)
    if num_q == 0:
        raise ValueError("similarity has no queries")

    # Group the gallery by pid once: positives of a query are one contiguous slice
    # of ``g_order`` (in ascending gallery index, thanks to the stable sort).
    g_sorted_pids, g_order = torch.sort(gp, stable=True)
    uniq, counts = torch.unique_consecutive(g_sorted_pids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(uniq, qp).clamp_(max=max(uniq.numel() - 1, 0))
    found = uniq[slot] == qp if uniq.numel() else torch.zeros_like(qp, dtype=torch.bool)
    num_pos = torch.where(found, counts[slot], torch.zeros_like(slot))
    _raise_missing_positives(num_pos)
    q_start = starts[slot]

    cdtype = _compute_dtype(sim.dtype)
    hits = torch.zeros(len(ks), dtype=torch.float64, device=device)
    ks_t = torch.tensor(ks, dtype=torch.int64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)

    for q0 in range(0, num_q, chunk_size):
        q1 = min(q0 + chunk_size, num_q)
        scores = sim[q0:q1].to(cdtype).contiguous()
        if torch.isnan(scores).any():
            raise ValueError(f"similarity contains NaN (in rows {q0}..{q1 - 1})")
        ranks, m = _positive_ranks(scores, num_pos[q0:q1], q_start[q0:q1], g_order, chunk_size)
        # ranks: [C, Pmax] ascending, padded with a large sentinel past the m valid ones.
        best = ranks[:, 0]
        hits += (best[:, None] <= ks_t[None, :]).sum(0, dtype=torch.float64)
        pmax = ranks.shape[1]
        order = torch.arange(1, pmax + 1, device=device, dtype=torch.float64)
        valid = order[None, :] <= m[:, None]
        precision = torch.where(valid, order[None, :] / ranks.to(torch.float64), 0.0)
        m64 = m.to(torch.float64)
        ap_sum += (precision.sum(1) / m64).sum()
        last = ranks.gather(1, (m - 1)[:, None]).squeeze(1).to(torch.float64)
        inp_sum += (m64 / last).sum()

    return _result(dict(zip(ks, hits.tolist())), float(ap_sum), float(inp_sum), num_q)


def _positive_ranks(
    scores: torch.Tensor,
    m: torch.Tensor,
    start: torch.Tensor,
    g_order: torch.Tensor,
    tie_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """1-based ranks of every positive of each row of ``scores``, sorted ascending.

    Returns ``(ranks [C, Pmax] int64, m [C])``; entries past ``m`` are padding.
    """
    c, g = scores.shape
    device = scores.device
    pmax = int(m.max())
    slots = torch.arange(pmax, device=device)
    valid = slots[None, :] < m[:, None]
    pos_idx = g_order[(start[:, None] + slots[None, :]).clamp_(max=g - 1)]
    pos_scores = scores.gather(1, pos_idx)
    inf = torch.tensor(float("inf"), dtype=scores.dtype, device=device)
    pos_scores = torch.where(valid, pos_scores, inf)

    # One binary search per gallery score gives both #{s_g > v} and #{s_g >= v} for
    # every positive score v: ">= v" is "> nextafter(v, -inf)", so search among the
    # 2*Pmax thresholds [nextafter(v), v]. With w sorted and b_g = #{i : w_i < s_g},
    # #{g : s_g > w_i} = #{g : b_g > i}, a suffix sum of the histogram of b.
    thresholds = torch.cat([torch.nextafter(pos_scores, -inf), pos_scores], dim=1)
    w, perm = torch.sort(thresholds, dim=1)
    where_in_w = torch.empty_like(perm).scatter_(1, perm, torch.arange(2 * pmax, device=device).expand(c, -1))
    bucket = torch.searchsorted(w.contiguous(), scores)
    hist = torch.zeros(c, 2 * pmax + 1, dtype=torch.int64, device=device)
    hist.scatter_add_(1, bucket, torch.ones((1, 1), dtype=torch.int64, device=device).expand(c, g))
    del bucket
    above = g - torch.cumsum(hist, dim=1)[:, : 2 * pmax]
    greater_equal = above.gather(1, where_in_w[:, :pmax])
    greater = above.gather(1, where_in_w[:, pmax:])
    ranks = greater + 1

    # Ties: equal scores rank by gallery index, so count the equal ones with a lower
    # index. Only needed where the score occurs more than once in the row (or is
    # -inf, where the nextafter trick cannot see ties).
    tied = valid & ((greater_equal - greater > 1) | torch.isneginf(pos_scores))
    if bool(tied.any()):
        rows, cols = torch.nonzero(tied, as_tuple=True)
        gal = torch.arange(g, device=device)
        for b0 in range(0, rows.numel(), tie_block):
            r = rows[b0 : b0 + tie_block]
            cc = cols[b0 : b0 + tie_block]
            p = pos_idx[r, cc]
            same = (scores[r] == pos_scores[r, cc][:, None]) & (gal[None, :] < p[:, None])
            ranks[r, cc] += same.sum(1)

    sentinel = torch.iinfo(torch.int64).max // 4
    ranks = torch.where(valid, ranks, torch.full_like(ranks, sentinel))
    ranks, _ = torch.sort(ranks, dim=1)
    return ranks, m


# --------------------------------------------------------------------------- #
# plain reference
# --------------------------------------------------------------------------- #
@torch.no_grad()
def reference_rank_metrics(
    similarity: torch.Tensor | np.ndarray,
    query_pids: Any,
    gallery_pids: Any,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Same metrics as :func:`rank_metrics` via one full stable argsort.

    Straightforward and memory-hungry (``Q x G`` int64 indices plus the sorted
    values); kept as the ground truth for tests and as the benchmark baseline.
    """
    sim = _as_similarity(similarity)
    ks = _check_ks(ks)
    num_q, num_g = sim.shape
    qp, gp = _as_pids(query_pids, gallery_pids, num_q, num_g, sim.device)
    if num_q == 0:
        raise ValueError("similarity has no queries")
    scores = sim.to(_compute_dtype(sim.dtype))
    if torch.isnan(scores).any():
        raise ValueError("similarity contains NaN")

    _, indices = torch.sort(scores, dim=1, descending=True, stable=True)
    matches = gp[indices] == qp[:, None]  # [Q, G] bool, in rank order
    num_pos = matches.sum(1)
    _raise_missing_positives(num_pos)

    rows, cols = torch.nonzero(matches, as_tuple=True)  # row-major: ranks ascending per row
    ranks = (cols + 1).to(torch.float64)
    first_of_row = torch.cumsum(num_pos, 0) - num_pos
    nth = (torch.arange(rows.numel(), device=sim.device) - first_of_row[rows] + 1).to(torch.float64)
    ap = torch.zeros(num_q, dtype=torch.float64, device=sim.device).index_add_(0, rows, nth / ranks)
    ap /= num_pos.to(torch.float64)
    best_rank = ranks[first_of_row]
    last_rank = ranks[first_of_row + num_pos - 1]
    inp = num_pos.to(torch.float64) / last_rank
    hits = {k: float((best_rank <= k).sum()) for k in ks}
    return _result(hits, float(ap.sum()), float(inp.sum()), num_q)


# --------------------------------------------------------------------------- #
# reporting
# --------------------------------------------------------------------------- #
def format_metrics_table(rows: dict[str, dict[str, float]]) -> str:
    """Render ``{task: metrics}`` as an aligned ``task | R1 | R5 | R10 | mAP | mINP`` table.

    Values are printed with two decimals; a missing metric shows as ``-``.
    """
    header = ["task", *_TABLE_COLUMNS]
    body = []
    for task, metrics in rows.items():
        cells = [str(task)]
        for col in _TABLE_COLUMNS:
            value = metrics.get(col)
            cells.append("-" if value is None else f"{float(value):.2f}")
        body.append(cells)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return " | ".join([first, *rest])

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in body)])


def effective_rank(embeddings: torch.Tensor) -> float:
    """exp(entropy) of the normalised squared singular values of the centred, L2-normalised rows:
    the number of directions the embedding spreads over (Roy & Vetterli, 2007). 1 when every row is
    the same point or on one line; the dimension when the rows fill the space evenly."""
    if embeddings.dim() != 2 or len(embeddings) < 2:
        raise ValueError(f"effective_rank needs [N >= 2, D] embeddings, got shape {tuple(embeddings.shape)}")
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    s = torch.linalg.svdvals(e - e.mean(0))
    p = s.pow(2) / s.pow(2).sum().clamp_min(1e-12)
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))
