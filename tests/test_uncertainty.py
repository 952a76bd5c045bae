"""Uncertainty evaluation tools against hand-computed small cases."""
import math

import numpy as np
import pytest
from PIL import Image

from tbps import uncertainty as unc


def test_rankdata_averages_ties():
    assert unc.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert unc.rankdata([3, 3, 3]).tolist() == [2.0, 2.0, 2.0]


def test_spearman_hand_computed_with_ties():
    # ranks of y: [1, 2, 3.5, 5, 3.5]; sum dx*dy = 8, sum dx^2 = 10, sum dy^2 = 9.5
    assert unc.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert unc.spearman([1, 2, 3, 4], [10, 1, 0.5, -3]) == pytest.approx(-1.0)
    assert unc.spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)  # monotone, not linear
    assert math.isnan(unc.spearman([1, 2, 3], [7, 7, 7]))


def test_equal_count_bins_split_sorted_values():
    values = np.arange(25)[::-1].astype(float)
    bins = unc.equal_count_bins(values, 10)
    assert [len(b) for b in bins] == [3] * 5 + [2] * 5
    assert np.concatenate([values[b] for b in bins]).tolist() == sorted(values.tolist())


def test_binned_accuracy_and_its_spearman():
    u = np.arange(20, dtype=float)
    correct = np.r_[np.ones(10), np.zeros(10)]  # the certain half is right, the uncertain half wrong
    r = unc.binned_accuracy(u, correct, 10)
    assert r["accuracy"] == [100.0] * 5 + [0.0] * 5
    assert r["count"] == [2] * 10
    assert r["mean_uncertainty"][0] == 0.5
    # accuracy ranks are two tie groups (8 and 3): rho = -sqrt(62.5 / 82.5)
    assert r["spearman"] == pytest.approx(-math.sqrt(62.5 / 82.5))


def test_risk_coverage_and_aurc_hand_computed():
    u = [0.1, 0.4, 0.2, 0.3]
    correct = [1, 0, 1, 0]
    cov, acc = unc.risk_coverage(u, correct)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert acc.tolist() == pytest.approx([1, 1, 2 / 3, 1 / 2])
    r = unc.aurc(u, correct)
    assert r["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)  # 5/24
    assert r["oracle"] == pytest.approx(5 / 24) and r["e_aurc"] == pytest.approx(0.0)
    worst = unc.aurc([-x for x in u], correct)  # most certain queries are the wrong ones
    assert worst["aurc"] == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)  # 19/24
    assert worst["e_aurc"] == pytest.approx(19 / 24 - 5 / 24)


def test_risk_coverage_ties_are_order_independent():
    _, acc = unc.risk_coverage([0.3, 0.3, 0.3, 0.3], [1, 0, 1, 0])
    assert acc.tolist() == pytest.approx([0.5] * 4)
    _, acc2 = unc.risk_coverage([0.3, 0.3, 0.3, 0.3], [0, 0, 1, 1])
    assert acc2.tolist() == pytest.approx(acc.tolist())
    assert unc.aurc([1, 1, 1, 1], [1, 0, 1, 0])["aurc"] == pytest.approx(0.5)


def test_expected_calibration_error_hand_computed():
    conf = [0.95, 0.95, 0.55, 0.25]
    correct = [1, 0, 1, 0]
    r = unc.expected_calibration_error(conf, correct, 15)
    # bins: {0.95, 0.95} acc 0.5, {0.55} acc 1, {0.25} acc 0
    assert r["ece"] == pytest.approx(0.5 * 0.45 + 0.25 * 0.45 + 0.25 * 0.25)
    assert sum(r["count"]) == 4 and r["count"][14] == 2 and r["count"][8] == 1 and r["count"][3] == 1
    assert unc.expected_calibration_error([1.0, 0.0], [1, 0])["ece"] == pytest.approx(0.0)  # edges land in bins
    assert unc.expected_calibration_error([0.8] * 10, [1] * 8 + [0] * 2)["ece"] == pytest.approx(0.0)


def test_fit_logistic_recovers_known_parameters():
    rng = np.random.default_rng(0)
    a, b = 3.0, 2.0
    x = rng.uniform(0, 2, 20000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(a * x - b))).astype(float)
    w, c = unc.fit_logistic(x, y)
    assert -w == pytest.approx(a, rel=0.08) and c == pytest.approx(b, rel=0.08)
    # separable or one-class data stays finite
    w, c = unc.fit_logistic([0.0, 1.0, 2.0, 3.0], [1, 1, 0, 0])
    assert math.isfinite(w) and math.isfinite(c) and w < 0
    assert all(math.isfinite(v) for v in unc.fit_logistic([1.0, 2.0], [1, 1]))


def test_plots_are_written(tmp_path):
    cov, acc = unc.risk_coverage(np.linspace(0, 1, 50), np.r_[np.ones(30), np.zeros(20)])
    path = unc.plot_risk_coverage(cov, acc, tmp_path / "sub" / "rc.png", note="AURC 0.1")
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (640, 480)
    colours = img.convert("RGB").getcolors(maxcolors=100000)
    assert colours is not None and len(colours) > 2  # axes, grid and a curve, not a blank page
    bars = unc.plot_binned_accuracy([90.0, 70.0, 40.0], tmp_path / "bins.png")
    assert Image.open(bars).size == (640, 480)
