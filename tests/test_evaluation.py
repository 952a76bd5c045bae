"""Tests for tbps.evaluation: hand-computed cases, tie rule, and chunked == full-sort."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tbps.evaluation import format_metrics_table, rank_metrics, reference_rank_metrics

METRIC_KEYS = ("mAP", "mINP")


def brute_force(sim: np.ndarray, qp, gp, ks=(1, 5, 10)) -> dict[str, float]:
    """Slowest, most literal version of the protocol (python sort, key = (-score, index))."""
    sim = np.asarray(sim, dtype=np.float64)
    hits = {k: 0 for k in ks}
    ap_sum = inp_sum = 0.0
    for i in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda g: (-sim[i, g], g))
        pos_ranks = [r + 1 for r, g in enumerate(order) if gp[g] == qp[i]]
        for k in ks:
            hits[k] += pos_ranks[0] <= k
        ap_sum += sum((n + 1) / r for n, r in enumerate(pos_ranks)) / len(pos_ranks)
        inp_sum += len(pos_ranks) / pos_ranks[-1]
    q = sim.shape[0]
    out = {f"R{k}": 100.0 * v / q for k, v in hits.items()}
    out.update(mAP=100.0 * ap_sum / q, mINP=100.0 * inp_sum / q, num_queries=q)
    return out


def assert_same(a: dict[str, float], b: dict[str, float], tol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key.startswith("R") or key == "num_queries":
            assert a[key] == pytest.approx(b[key], abs=1e-12), key  # counts: exact
        else:
            assert a[key] == pytest.approx(b[key], abs=tol), key


def both(sim, qp, gp, **kw) -> list[dict[str, float]]:
    chunk = kw.pop("chunk_size", 256)
    return [rank_metrics(sim, qp, gp, chunk_size=chunk, **kw), reference_rank_metrics(sim, qp, gp, **kw)]


# --------------------------------------------------------------------------- #
# hand-computed cases
# --------------------------------------------------------------------------- #
def test_hand_two_queries_two_positives_each() -> None:
    gp = [1, 2, 1, 3, 2]
    qp = [1, 2]
    sim = torch.tensor(
        [
            # order: g0 .9, g1 .8, g3 .7, g4 .3, g2 .1 -> positives (pid 1) g0 @1, g2 @5
            # AP = (1/1 + 2/5) / 2 = 0.7 ; INP = 2/5 = 0.4 ; hit at 1
            [0.9, 0.8, 0.1, 0.7, 0.3],
            # order: g2 .6, g0 .5, g3 .4, g1 .2, g4 .1 -> positives (pid 2) g1 @4, g4 @5
            # AP = (1/4 + 2/5) / 2 = 0.325 ; INP = 2/5 = 0.4 ; best rank 4
            [0.5, 0.2, 0.6, 0.4, 0.1],
        ]
    )
    # R1 = 1/2, R3 = 1/2, R5 = 2/2 ; mAP = (0.7 + 0.325) / 2 = 0.5125 ; mINP = 0.4
    expected = {"R1": 50.0, "R3": 50.0, "R5": 100.0, "mAP": 51.25, "mINP": 40.0, "num_queries": 2}
    for got in both(sim, qp, gp, ks=(1, 3, 5), chunk_size=1):
        assert_same(got, expected)
    assert_same(brute_force(sim.numpy(), qp, gp, ks=(1, 3, 5)), expected)


def test_hand_single_positive_ap_equals_inp() -> None:
    gp = [10, 20, 30, 40]
    qp = [30, 10, 40]
    sim = np.array(
        [
            [0.1, 0.2, 0.3, 0.4],  # order g3 g2 g1 g0: positive g2 @2 -> AP = INP = 1/2
            [0.9, 0.1, 0.2, 0.3],  # positive g0 @1 -> AP = INP = 1
            [0.4, 0.3, 0.2, 0.1],  # positive g3 @4 -> AP = INP = 1/4
        ],
        dtype=np.float32,
    )
    # R1 = 1/3, R2 = 2/3, R3 = 2/3 ; mAP = mINP = (1/2 + 1 + 1/4) / 3 = 0.58333..
    expected = {
        "R1": 100 / 3,
        "R2": 200 / 3,
        "R3": 200 / 3,
        "mAP": 175 / 3,
        "mINP": 175 / 3,
        "num_queries": 3,
    }
    for got in both(sim, qp, gp, ks=(1, 2, 3), chunk_size=2):
        assert_same(got, expected)


def test_hand_three_positives_default_ks() -> None:
    gp = [7, 1, 7, 2, 7, 3]
    qp = [7]
    # order: g1 .9, g2 .8, g3 .7, g5 .6, g0 .2, g4 .1 -> positives g2 @2, g0 @5, g4 @6
    # AP = (1/2 + 2/5 + 3/6) / 3 = 1.4 / 3 ; INP = 3/6 ; R1 = 0, R5 = R10 = 1
    sim = torch.tensor([[0.2, 0.9, 0.8, 0.7, 0.1, 0.6]], dtype=torch.float64)
    expected = {"R1": 0.0, "R5": 100.0, "R10": 100.0, "mAP": 140 / 3, "mINP": 50.0, "num_queries": 1}
    for got in both(sim, qp, gp):
        assert_same(got, expected)


# --------------------------------------------------------------------------- #
# ties: lower gallery index ranks first
# --------------------------------------------------------------------------- #
def test_all_equal_scores_rank_by_index() -> None:
    # every score equal: rank = index + 1, so positives g1 @2 and g3 @4.
    # AP = (1/2 + 2/4) / 2 = 0.5 ; INP = 2/4. (Reversed tie-breaking would give
    # ranks 1 and 3: R1 = 100, AP = 0.8333, so the rule is really tested.)
    sim = torch.full((1, 4), 0.5)
    expected = {"R1": 0.0, "R2": 100.0, "mAP": 50.0, "mINP": 50.0, "num_queries": 1}
    for got in both(sim, [1], [2, 1, 2, 1], ks=(1, 2)):
        assert_same(got, expected)


def test_partial_ties_rank_by_index() -> None:
    gp = [3, 1, 2, 2, 1]
    qp = [1, 2]
    sim = torch.tensor(
        [
            # g0 .9 @1, then g1 g2 g3 tie at .5 -> @2 @3 @4, g4 .1 @5.
            # positives (pid 1) g1 @2, g4 @5: AP = (1/2 + 2/5)/2 = 0.45 ; INP = 2/5
            # (higher-index-first would put g1 @4: AP = 0.325)
            [0.9, 0.5, 0.5, 0.5, 0.1],
            # g2 .9 @1, then g0 g1 g3 g4 tie -> @2 @3 @4 @5.
            # positives (pid 2) g2 @1, g3 @4: AP = (1/1 + 2/4)/2 = 0.75 ; INP = 2/4
            # (higher-index-first would put g3 @3: AP = 0.8333)
            [0.5, 0.5, 0.9, 0.5, 0.5],
        ]
    )
    # best ranks 2 and 1 ; mAP = (0.45 + 0.75) / 2 = 0.6 ; mINP = (0.4 + 0.5) / 2 = 0.45
    expected = {"R1": 50.0, "R2": 100.0, "R3": 100.0, "mAP": 60.0, "mINP": 45.0, "num_queries": 2}
    for chunk in (1, 2):
        for got in both(sim, qp, gp, ks=(1, 2, 3), chunk_size=chunk):
            assert_same(got, expected)
    assert_same(brute_force(sim.numpy(), qp, gp, ks=(1, 2, 3)), expected)


def test_ties_with_infinities() -> None:
    inf = float("inf")
    sim = torch.tensor(
        [
            [-inf, 0.0, -inf, inf, -inf, inf],
            [inf, inf, 1.0, -inf, inf, 1.0],
        ]
    )
    qp, gp = [1, 2], [1, 2, 1, 2, 1, 1]
    got = rank_metrics(sim, qp, gp, ks=(1, 2, 3))
    assert_same(got, reference_rank_metrics(sim, qp, gp, ks=(1, 2, 3)))
    assert_same(got, brute_force(sim.numpy(), qp, gp, ks=(1, 2, 3)))


# --------------------------------------------------------------------------- #
# random matrices: chunked == full sort == python brute force
# --------------------------------------------------------------------------- #
def random_problem(seed: int, q: int, g: int, num_ids: int, levels: int | None = None):
    rng = np.random.default_rng(seed)
    gp = rng.integers(0, num_ids, size=g)
    gp[:num_ids] = np.arange(num_ids)  # every id present at least once
    qp = gp[rng.integers(0, g, size=q)]
    if levels is None:
        sim = rng.standard_normal((q, g)).astype(np.float32)
    else:  # few distinct values -> many ties
        sim = rng.integers(0, levels, size=(q, g)).astype(np.float32)
    return sim, qp, gp


@pytest.mark.parametrize("seed", range(12))
def test_random_against_reference(seed: int) -> None:
    q, g = 20 + 7 * seed, 30 + 11 * seed
    levels = [None, 3, 50][seed % 3]
    sim, qp, gp = random_problem(seed, q, g, num_ids=max(2, g // (2 + seed % 5)), levels=levels)
    ks = (1, 5, 10, 2 * g)
    ref = reference_rank_metrics(sim, qp, gp, ks=ks)
    for chunk in (1, 3, 17, q, q + 100):
        assert_same(rank_metrics(torch.from_numpy(sim), qp, gp, ks=ks, chunk_size=chunk), ref)
    if seed < 4:
        assert_same(ref, brute_force(sim, qp, gp, ks=ks))


def test_query_with_many_positives() -> None:
    rng = np.random.default_rng(5)
    g = 1000
    gp = rng.integers(1, 40, size=g)
    gp[rng.random(g) < 0.5] = 0  # id 0 owns about half the gallery
    qp = np.array([0, 0, 3, 17, 0])
    sim = rng.standard_normal((len(qp), g))
    sim[1, gp == 0] += 2.0  # mostly near the top
    sim[4] = np.round(sim[4])  # heavy ties
    ks = (1, 5, 10, 600)
    got = rank_metrics(sim, qp, gp, ks=ks, chunk_size=2)
    assert_same(got, reference_rank_metrics(sim, qp, gp, ks=ks))
    assert_same(got, brute_force(sim, qp, gp, ks=ks))


def test_all_gallery_positive_is_perfect() -> None:
    sim = torch.randn(3, 8)
    got = rank_metrics(sim, [4, 4, 4], [4] * 8)
    assert got["R1"] == got["mAP"] == got["mINP"] == 100.0


def test_half_precision_and_numpy_inputs() -> None:
    sim, qp, gp = random_problem(1, 40, 60, num_ids=12, levels=None)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        t = torch.from_numpy(sim).to(dtype)
        # the reference upcasts the whole matrix the same way, ties from rounding included
        assert_same(rank_metrics(t, qp, gp, chunk_size=7), reference_rank_metrics(t, qp, gp))
    expected = reference_rank_metrics(torch.from_numpy(sim), torch.from_numpy(qp), torch.from_numpy(gp))
    assert_same(rank_metrics(sim, list(qp), list(gp)), expected)
    assert_same(rank_metrics(sim.astype(np.float64), qp.astype(np.int32), gp), expected)
    assert_same(rank_metrics(np.asfortranarray(sim), qp, gp, chunk_size=9), expected)
    # string labels work too
    names = np.array([f"id{p:03d}" for p in range(12)])
    assert_same(rank_metrics(sim, names[qp], names[gp]), expected)


def test_input_not_modified_and_keys() -> None:
    sim, qp, gp = random_problem(2, 10, 20, num_ids=5, levels=4)
    before = sim.copy()
    got = rank_metrics(sim, qp, gp)
    np.testing.assert_array_equal(sim, before)
    assert list(got) == ["R1", "R5", "R10", "mAP", "mINP", "num_queries"]
    assert got["num_queries"] == 10


def test_large_matrix_chunked_without_full_argsort(monkeypatch: pytest.MonkeyPatch) -> None:
    q, g = 3000, 3000
    rng = np.random.default_rng(0)
    gp = np.repeat(np.arange(g // 6), 6)
    rng.shuffle(gp)
    qp = gp[rng.integers(0, g, size=q)]
    sim = torch.from_numpy(rng.standard_normal((q, g)).astype(np.float32))
    sim[:, 0::7] = 0.25  # plenty of exact ties as well
    ref = reference_rank_metrics(sim, qp, gp)

    largest: list[int] = [0]
    real_sort, real_argsort = torch.sort, torch.argsort

    def spy(real):
        def wrapped(x, *args, **kwargs):
            largest[0] = max(largest[0], x.numel())
            return real(x, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(torch, "sort", spy(real_sort))
    monkeypatch.setattr(torch, "argsort", spy(real_argsort))
    got = rank_metrics(sim, qp, gp, chunk_size=128)
    assert_same(got, ref)
    assert largest[0] <= g  # only the gallery pids and per-chunk [128, few] blocks are sorted


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
def test_query_without_positive_raises() -> None:
    sim = torch.rand(4, 3)
    with pytest.raises(ValueError, match=r"2 of 4 queries have no positive.*indices 1, 3"):
        rank_metrics(sim, [1, 9, 2, 8], [1, 2, 2])
    with pytest.raises(ValueError, match="no positive"):
        reference_rank_metrics(sim, [1, 9, 2, 8], [1, 2, 2])


def test_many_missing_queries_message_is_short() -> None:
    with pytest.raises(ValueError, match=r"30 of 31 queries .*\.\.\."):
        rank_metrics(torch.rand(31, 2), [0] + [5] * 30, [0, 0])


@pytest.mark.parametrize(
    "sim, qp, gp, match",
    [
        (torch.rand(3), [1, 2, 3], [1, 2, 3], "2-D"),
        (torch.rand(2, 3), [1, 2, 3], [1, 2, 3], "query_pids has 3"),
        (torch.rand(2, 3), [1, 2], [1, 2], "gallery_pids has 2"),
        (torch.tensor([[0.1, float("nan")]]), [1], [1, 1], "NaN"),
    ],
)
def test_bad_inputs(sim, qp, gp, match) -> None:
    with pytest.raises(ValueError, match=match):
        rank_metrics(sim, qp, gp)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        rank_metrics(torch.rand(2, 2), [1, 2], [1, 2], chunk_size=0)
    with pytest.raises(ValueError, match="ks"):
        rank_metrics(torch.rand(2, 2), [1, 2], [1, 2], ks=(0, 1))


# --------------------------------------------------------------------------- #
# table
# --------------------------------------------------------------------------- #
def test_format_metrics_table() -> None:
    table = format_metrics_table(
        {
            "t2i": {"R1": 73.125, "R5": 89.0, "R10": 93.456, "mAP": 66.1, "mINP": 50.0, "num_queries": 6156},
            "t2i-rerank": {"R1": 75.0, "R5": 90.0, "R10": 94.0, "mAP": 67.0},
        }
    )
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")] == ["task", "R1", "R5", "R10", "mAP", "mINP"]
    assert [c.strip() for c in lines[2].split("|")] == ["t2i", "73.12", "89.00", "93.46", "66.10", "50.00"]
    assert [c.strip() for c in lines[3].split("|")] == ["t2i-rerank", "75.00", "90.00", "94.00", "67.00", "-"]
    assert len({len(line) for line in lines}) == 1  # aligned
