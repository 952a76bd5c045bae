import math

import torch
import torch.nn.functional as F

from tbps.methods.losses import identity_targets, sdm_loss
from tbps.methods.masking import mask_tokens


def test_identity_targets_rows_sum_to_one_over_same_identity():
    q = identity_targets(torch.tensor([0, 1, 0, 2]))
    assert torch.allclose(q[0], torch.tensor([0.5, 0, 0.5, 0]))
    assert torch.allclose(q.sum(1), torch.ones(4))


def test_sdm_matches_elementwise_definition():
    torch.manual_seed(0)
    v, t = torch.randn(5, 8), torch.randn(5, 8)
    pids = torch.tensor([0, 0, 1, 2, 2])
    got = sdm_loss(v, t, pids, tau=0.1)
    vn, tn = F.normalize(v, dim=1), F.normalize(t, dim=1)
    q = identity_targets(pids)
    want = 0.0
    for S in ((tn @ vn.t()) / 0.1, (vn @ tn.t()) / 0.1):
        for i in range(5):
            p = S[i].softmax(0)
            want += sum(float(p[j]) * (math.log(float(p[j])) - math.log(float(q[i, j]) + 1e-8)) for j in range(5)) / 5
    assert abs(float(got) - want) < 1e-4


def test_sdm_is_small_when_aligned_and_large_when_swapped():
    e = F.normalize(torch.eye(4), dim=1)
    pids = torch.arange(4)
    assert sdm_loss(e, e, pids) < 1e-3
    assert sdm_loss(e, e[[1, 0, 3, 2]], pids) > 5


def test_mask_tokens_rules():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[1, 10, 11, 12, 13, 2, 0, 0]] * 200)
    mask = ids != 0
    special = {0, 1, 2}
    out, labels = mask_tokens(ids, mask, special, mask_id=3, vocab_size=50, generator=g, prob=0.15)
    chosen = labels != -100
    assert chosen.sum(1).min() >= 1  # at least one per caption
    assert not chosen[:, [0, 5, 6, 7]].any()  # specials and padding never masked
    assert torch.equal(labels[chosen], ids[chosen])
    frac_mask = float((out[chosen] == 3).float().mean())
    assert 0.7 < frac_mask < 0.9
    unchanged = out[~chosen] == ids[~chosen]
    assert unchanged.all()
    # candidates restrict the choice
    cand = torch.zeros_like(ids, dtype=torch.bool)
    cand[:, 2] = True
    _, labels2 = mask_tokens(ids, mask, special, 3, 50, g, prob=0.15, candidates=cand)
    assert ((labels2 != -100) == cand).all()
    # deterministic for the same generator seed
    a = mask_tokens(ids, mask, special, 3, 50, torch.Generator().manual_seed(5))
    b = mask_tokens(ids, mask, special, 3, 50, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
