"""Does predicted uncertainty mean anything? Binned accuracy, risk-coverage, calibration.

Tools to check a probabilistic retrieval model's uncertainty against its mistakes (UCA,
METHODS.md section 4.6), independent of any model:

* `binned_accuracy` + `spearman`: sort queries into equal-count bins by uncertainty; accuracy
  should fall as uncertainty grows, i.e. a negative rank correlation between bin index and accuracy;
* `risk_coverage` + `aurc`: accuracy of the most certain x% of queries, and the area under the
  risk (= 1 - accuracy) curve; lower is better;
* `fit_logistic` + `expected_calibration_error`: turn a distance into a match probability and
  measure how well confidence matches accuracy;
* `plot_risk_coverage` / `plot_binned_accuracy`: PNG figures drawn with PIL (no plotting library).

Inputs are 1-d arrays or tensors; results are plain floats / lists, ready for JSON.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = [
    "rankdata",
    "spearman",
    "equal_count_bins",
    "binned_accuracy",
    "risk_coverage",
    "aurc",
    "expected_calibration_error",
    "fit_logistic",
    "plot_risk_coverage",
    "plot_binned_accuracy",
]


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


# --------------------------------------------------------------------------- rank correlation
def rankdata(x: Any) -> np.ndarray:
    """Ranks 1..n, ties sharing the average of their ranks (as scipy.stats.rankdata)."""
    x = _np(x)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman's rho: Pearson correlation of the (tie-averaged) ranks; NaN if either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if len(rx) != len(ry):
        raise ValueError(f"spearman needs equal lengths, got {len(rx)} and {len(ry)}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


# --------------------------------------------------------------------------- binned accuracy
def equal_count_bins(values: Any, n_bins: int = 10) -> list[np.ndarray]:
    """Indices of `values` split into `n_bins` bins of (almost) equal size, ascending value.

    Ties are broken by position (stable sort), so equal values may straddle a bin edge; with
    fewer values than bins some bins are empty.
    """
    order = np.argsort(_np(values), kind="stable")
    return [b for b in np.array_split(order, n_bins)]


def binned_accuracy(uncertainty: Any, correct: Any, n_bins: int = 10) -> dict[str, Any]:
    """Accuracy (%) per equal-count uncertainty bin, and Spearman of bin index vs accuracy.

    A meaningful uncertainty gives a strongly negative Spearman (accuracy falls bin by bin).
    """
    u, c = _np(uncertainty), _np(correct)
    bins = [b for b in equal_count_bins(u, n_bins) if len(b)]
    acc = [float(c[b].mean() * 100.0) for b in bins]
    return {
        "n_bins": len(bins),
        "count": [int(len(b)) for b in bins],
        "mean_uncertainty": [float(u[b].mean()) for b in bins],
        "accuracy": acc,
        "spearman": spearman(np.arange(len(bins)), acc) if len(bins) > 1 else float("nan"),
    }


# --------------------------------------------------------------------------- risk-coverage
def risk_coverage(uncertainty: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy) when keeping the k most certain queries, k = 1..n.

    Queries with equal uncertainty cannot be ordered, so within a tie group each query counts
    with the group's mean correctness: the expected curve under random tie-breaking, which makes
    the result independent of input order (a constant uncertainty gives a flat curve).
    """
    u, c = _np(uncertainty), _np(correct)
    n = len(u)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(u, kind="stable")
    us, cs = u[order], c[order].copy()
    starts = np.flatnonzero(np.r_[True, us[1:] != us[:-1]])
    ends = np.r_[starts[1:], n]
    for s, e in zip(starts, ends):
        if e - s > 1:
            cs[s:e] = cs[s:e].mean()
    k = np.arange(1, n + 1)
    return k / n, np.cumsum(cs) / k


def aurc(uncertainty: Any, correct: Any) -> dict[str, float]:
    """Area under the risk-coverage curve (mean risk over k = 1..n), its oracle and the excess.

    `aurc` is the mean of (1 - accuracy of the k most certain), `oracle` the same with the
    correct queries ranked first (the best any uncertainty could do at this accuracy),
    `e_aurc = aurc - oracle`. All in [0, 1]; lower is better.
    """
    c = _np(correct)
    if len(c) == 0:
        return {"aurc": float("nan"), "oracle": float("nan"), "e_aurc": float("nan")}
    _, acc = risk_coverage(uncertainty, c)
    _, best = risk_coverage(-c, c)  # correct first
    a, o = float((1 - acc).mean()), float((1 - best).mean())
    return {"aurc": a, "oracle": o, "e_aurc": a - o}


# --------------------------------------------------------------------------- calibration
def expected_calibration_error(confidence: Any, correct: Any, n_bins: int = 15) -> dict[str, Any]:
    """ECE over `n_bins` equal-width confidence bins: sum_b (n_b / n) |accuracy_b - confidence_b|.

    Bin b holds confidences in (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 goes to the
    first bin. Returns the ECE plus per-bin counts, accuracies and mean confidences (None for
    empty bins), all as fractions in [0, 1].
    """
    p, c = _np(confidence), _np(correct)
    n = len(p)
    idx = np.clip(np.ceil(p * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece, counts, accs, confs = 0.0, [], [], []
    for b in range(n_bins):
        sel = idx == b
        m = int(sel.sum())
        counts.append(m)
        if m == 0:
            accs.append(None)
            confs.append(None)
            continue
        a, f = float(c[sel].mean()), float(p[sel].mean())
        accs.append(a)
        confs.append(f)
        ece += m / n * abs(a - f)
    return {"ece": float(ece) if n else float("nan"), "n_bins": n_bins, "count": counts,
            "accuracy": accs, "confidence": confs}


def fit_logistic(x: Any, y: Any, l2: float = 1e-4, iters: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """Fit p(y = 1 | x) = sigmoid(w * x + c) by Newton's method; returns (w, c).

    One feature, so the Hessian is 2x2. `x` is standardised internally for conditioning; a small
    ridge penalty `l2` (on the standardised slope and the intercept) keeps the fit finite when
    the classes are separable or all equal.
    """
    x, y = _np(x), _np(y)
    if len(x) == 0:
        return 0.0, 0.0
    mean, std = float(x.mean()), float(x.std())
    std = std if std > 0 else 1.0
    xs = (x - mean) / std
    X = np.stack([xs, np.ones_like(xs)], 1)
    theta = np.zeros(2)
    n = len(x)
    for _ in range(iters):
        z = np.clip(X @ theta, -50, 50)
        p = 1.0 / (1.0 + np.exp(-z))
        grad = X.T @ (p - y) / n + l2 * theta
        H = (X * (p * (1 - p))[:, None]).T @ X / n + l2 * np.eye(2)
        step = np.linalg.solve(H, grad)
        theta -= step
        if float(np.abs(step).max()) < tol:
            break
    w = theta[0] / std
    return float(w), float(theta[1] - w * mean)


# --------------------------------------------------------------------------- figures (PIL)
def _canvas(title: str, xlabel: str, ylabel: str, size: tuple[int, int] = (640, 480),
            xticks: list[tuple[float, str]] | None = None):
    """A white image with axes; returns (image, draw, to_pixel(x, y) for x, y in [0, 1])."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 40, 55
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + x * (w - left - right), h - bottom - y * (h - top - bottom)

    draw.rectangle([to_px(0, 1), to_px(1, 0)], outline="black")
    for pos, label in xticks if xticks is not None else [(t, f"{t:.1f}") for t in np.linspace(0, 1, 6)]:
        x0, y0 = to_px(pos, 0)
        draw.line([(x0, y0), (x0, y0 + 5)], fill="black")
        draw.text((x0 - 3 * len(label), y0 + 8), label, fill="black")
    for t in np.linspace(0, 1, 6):
        x1, y1 = to_px(0, t)
        draw.line([(x1 - 5, y1), (x1, y1)], fill="black")
        draw.text((x1 - 32, y1 - 6), f"{t:.1f}", fill="black")
        if 0 < t < 1:
            if xticks is None:
                draw.line([to_px(t, 0), to_px(t, 1)], fill=(225, 225, 225))
            draw.line([to_px(0, t), to_px(1, t)], fill=(225, 225, 225))
    draw.rectangle([to_px(0, 1), to_px(1, 0)], outline="black")
    draw.text((w / 2 - 3 * len(title), 8), title, fill="black")
    draw.text((left + (w - left - right) / 2 - 3 * len(xlabel), h - 25), xlabel, fill="black")
    draw.text((5, top - 16), ylabel, fill="black")
    return img, draw, to_px


def plot_risk_coverage(coverage: Sequence[float], accuracy: Sequence[float], path: str | Path,
                       title: str = "risk-coverage", note: str = "") -> Path:
    """Accuracy of the most certain queries vs coverage, with the overall accuracy dashed."""
    cov, acc = _np(coverage), _np(accuracy)
    img, draw, to_px = _canvas(title + (f"  ({note})" if note else ""), "coverage (most certain first)",
                               "accuracy (Rank-1)")
    if len(cov):
        step = max(1, len(cov) // 2000)  # a few thousand vertices are plenty for 640 px
        pts = [to_px(float(x), float(y)) for x, y in zip(cov[::step], acc[::step])]
        pts.append(to_px(float(cov[-1]), float(acc[-1])))
        overall = float(acc[-1])
        for x in np.arange(0, 1, 0.02):
            draw.line([to_px(x, overall), to_px(min(1.0, x + 0.01), overall)], fill=(150, 150, 150))
        if len(pts) > 1:
            draw.line(pts, fill=(31, 119, 180), width=2)
        else:
            x, y = pts[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def plot_binned_accuracy(accuracy: Sequence[float], path: str | Path, title: str = "Rank-1 by uncertainty bin") -> Path:
    """Bar chart of accuracy (%) per uncertainty bin, most certain bin on the left."""
    acc = [a / 100.0 for a in accuracy]
    n = max(1, len(acc))
    ticks = [((i + 0.5) / n, str(i + 1)) for i in range(len(acc))]
    img, draw, to_px = _canvas(title, "uncertainty bin (low -> high)", "Rank-1", xticks=ticks)
    for i, a in enumerate(acc):
        x0, y0 = to_px((i + 0.15) / n, a)
        x1, y1 = to_px((i + 0.85) / n, 0)
        draw.rectangle([x0, y0, x1, y1], fill=(31, 119, 180))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path
