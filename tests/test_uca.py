"""UCA: Gaussian distances, sampling, losses, the decoder's inputs, calibration, and the CLI end to end."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from fixtures import cli_train_args, render_tiny_benchmark, write_icfg_fixture
from tbps.cli import main
from tbps.data.tokenizers import ClipBpeTokenizer
from tbps.methods import METHODS, build_method
from tbps.methods.distributions import (csd_distance, kl_to_standard_normal, paired_distance, pairwise_distance,
                                        sample_points, uncertainty, w2_distance)
from tbps.methods.uca import VarianceHead, attribute_flags, entropy_hinge, multi_positive_nce
from tbps.models import build_backbone


class FakeTokenizer:
    vocab_size, pad_id, mask_id, bos_id, eos_id = 60, 0, 4, 2, 3
    special_ids = {0, 1, 2, 3, 4}


SMALL = dict(vision_width=64, vision_heads=2, vision_layers=1, text_width=64, text_heads=2, text_layers=1,
             embed_dim=64, vocab_size=60)


def _uca(**cfg):
    torch.manual_seed(0)
    cfg = {"cross_layers": 1, "num_samples": 3, **cfg}
    return build_method("uca", cfg, build_backbone("tiny-clip", **SMALL), num_classes=4, tokenizer=FakeTokenizer())


def _batch(B=8, L=10, seed=0, flags=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    batch = {"images": torch.randn(B, 3, 128, 64, generator=g),
             "tokens": {"ids": ids, "attention_mask": torch.ones(B, L, dtype=torch.bool),
                        "eot_index": torch.full((B,), L - 1)},
             "pids": torch.arange(B) // 2, "image_index": torch.arange(B),  # every row its own picture
             "mask_generator": torch.Generator().manual_seed(seed)}
    if flags:
        f = torch.zeros(B, L, dtype=torch.bool)
        f[: B // 2, 2:5] = True  # half the captions have attribute tokens, half fall back to random masking
        batch["attr_flags"] = f
    return batch


def _gaussians(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.randn(n, d, generator=g) - 3


# ----------------------------------------------------------------------------- distributions
def test_w2_and_csd_matrix_forms_equal_per_pair_computation():
    mu1, lv1 = _gaussians(5, seed=0)
    mu2, lv2 = _gaussians(4, seed=1)
    w2, csd = w2_distance(mu1, lv1, mu2, lv2), csd_distance(mu1, lv1, mu2, lv2)
    for i in range(5):
        for j in range(4):
            s1, s2 = (0.5 * lv1[i]).exp(), (0.5 * lv2[j]).exp()
            direct_w2 = ((mu1[i] - mu2[j]) ** 2).sum() + ((s1 - s2) ** 2).sum()
            direct_csd = ((mu1[i] - mu2[j]) ** 2).sum() + lv1[i].exp().sum() + lv2[j].exp().sum()
            assert torch.isclose(w2[i, j], direct_w2, atol=1e-5)
            assert torch.isclose(csd[i, j], direct_csd, atol=1e-5)
    assert torch.allclose(pairwise_distance("w2", mu1, lv1, mu2, lv2, chunk_size=2), w2)
    assert torch.allclose(paired_distance("csd", mu1[:4], lv1[:4], mu2, lv2), csd.diagonal(), atol=1e-6)
    assert pairwise_distance("w2", mu1.bfloat16(), lv1.bfloat16(), mu2, lv2).dtype == torch.float32


def test_kl_matches_torch_distributions():
    mu, lv = _gaussians(6, seed=2)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * lv).exp()),
                                            torch.distributions.Normal(0.0, 1.0)).sum(-1).mean()
    assert torch.isclose(kl_to_standard_normal(mu, lv), ref, atol=1e-4)
    assert torch.allclose(uncertainty(lv, "trace"), lv.exp().sum(-1))
    assert torch.allclose(uncertainty(lv, "mean_var"), lv.exp().mean(-1))


def test_sampling_is_deterministic_under_a_seeded_generator():
    mu, lv = _gaussians(3, seed=3)
    a = sample_points(mu, lv, 7, torch.Generator().manual_seed(5))
    b = sample_points(mu, lv, 7, torch.Generator().manual_seed(5))
    c = sample_points(mu, lv, 7, torch.Generator().manual_seed(6))
    assert a.shape == (3, 7, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3, 7))
    tight = sample_points(mu, torch.full_like(lv, -15.0), 4, torch.Generator().manual_seed(0))
    assert torch.allclose(tight, mu[:, None].expand_as(tight), atol=5e-3)  # sigma = e^-7.5


# ----------------------------------------------------------------------------- point contrast
def _direct_nce(a, c, la, lc, tau, ia=None, ic=None):
    total, n = 0.0, 0
    for i in range(len(a)):
        keep = [j for j in range(len(c)) if ia is None or ia[i] != ic[j]]
        logits = torch.stack([a[i] @ c[j] / tau for j in keep])
        logp = logits - torch.logsumexp(logits, 0)
        pos = [k for k, j in enumerate(keep) if la[i] == lc[j]]
        if pos:
            total += -sum(logp[k] for k in pos) / len(pos)
            n += 1
    return total / n


def test_multi_positive_infonce_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    a, c = F.normalize(torch.randn(6, 5, generator=g), dim=-1), F.normalize(torch.randn(7, 5, generator=g), dim=-1)
    la, lc = torch.tensor([0, 0, 1, 1, 2, 3]), torch.tensor([0, 1, 1, 2, 2, 0, 4])  # anchor 3 has no positive
    got = multi_positive_nce(a, c, la, lc, 0.5)
    assert torch.isclose(got, _direct_nce(a, c, la, lc, 0.5), atol=1e-5)


def test_intra_modal_excludes_the_anchors_own_samples():
    k = 3
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(4 * k, 6, generator=g), dim=-1)
    labels = torch.tensor([0, 0, 1, 2]).repeat_interleave(k)  # items 2 and 3 have no other item of their id
    items = torch.arange(4).repeat_interleave(k)
    got = multi_positive_nce(z, z, labels, labels, 0.1, items, items)
    assert torch.isclose(got, _direct_nce(z, z, labels, labels, 0.1, items, items), atol=1e-5)
    assert not torch.isclose(got, multi_positive_nce(z, z, labels, labels, 0.1))  # exclusion matters
    # the anchor's own samples are not positives: an identity with a single item has no positive at all
    single = multi_positive_nce(z[:k], z[:k], labels[:k], labels[:k], 0.1, items[:k], items[:k])
    assert float(single) == 0.0
    # ... nor negatives: moving the anchor's other samples leaves its term unchanged
    moved = z.clone()
    moved[1:k] = F.normalize(torch.randn(k - 1, 6, generator=g), dim=-1)
    anchor0 = multi_positive_nce(moved[:1], moved, labels[:1], labels, 0.1, items[:1], items)
    ref = multi_positive_nce(z[:1], z, labels[:1], labels, 0.1, items[:1], items)
    assert torch.isclose(anchor0, ref)


def _intra_calls(m, batch, monkeypatch):
    """Run the model's forward and return (labels, dropped-pair groups) of its intra-modal PCL calls."""
    import tbps.methods.uca as uca_module
    seen = []
    real = uca_module.multi_positive_nce

    def spy(anchors, candidates, la, lc, tau, ia=None, ic=None):
        if ia is not None:
            seen.append((la.clone(), ia.clone()))
        return real(anchors, candidates, la, lc, tau, ia, ic)

    monkeypatch.setattr(uca_module, "multi_positive_nce", spy)
    out = m(batch)
    return out, seen


def test_intra_modal_positives_exclude_same_picture_pairs(monkeypatch):
    """Hand-built batch: id 0 is one picture with 2 captions plus another picture; id 1 two captions of one
    picture. Under `intra_exclude: image` no intra positive pair shows the same picture; under `item` some do."""
    k = 3
    picture = torch.tensor([10, 10, 11, 12, 12, 13, 14, 15])
    counts, losses = {}, {}
    for rule in ("image", "item"):
        batch = _batch(B=8, flags=False) | {"pids": torch.tensor([0, 0, 0, 1, 1, 2, 2, 2]), "image_index": picture}
        out, calls = _intra_calls(_uca(num_samples=k, intra_exclude=rule, loss_weights={"rec": 0.0}), batch,
                                  monkeypatch)
        assert len(calls) == 2  # image-image and text-text
        labels, groups = calls[0]
        pos = (labels[:, None] == labels[None, :]) & (groups[:, None] != groups[None, :])
        same_picture = picture.repeat_interleave(k)[:, None] == picture.repeat_interleave(k)[None, :]
        counts[rule] = (int((pos & same_picture).sum()), int((pos & ~same_picture).sum()))
        losses[rule] = out["pcl_intra"]
    assert counts["image"][0] == 0 and counts["item"][0] == 2 * k * k * 2  # rows 0-1 and 3-4, both orders
    assert counts["image"][1] == counts["item"][1] > 0  # other pictures of the same id stay positives
    assert not torch.isclose(losses["image"], losses["item"])
    # every row its own picture: the two rules agree exactly
    a = _uca(intra_exclude="image", loss_weights={"rec": 0.0})(_batch(B=8, flags=False))["pcl_intra"]
    b = _uca(intra_exclude="item", loss_weights={"rec": 0.0})(_batch(B=8, flags=False))["pcl_intra"]
    assert torch.equal(a, b)
    plain = _batch(B=8, flags=False)
    no_index = {k_: v for k_, v in plain.items() if k_ != "image_index"}
    with pytest.raises(ValueError, match="image_index"):
        _uca(loss_weights={"rec": 0.0})(no_index)
    with pytest.raises(ValueError, match="intra_exclude"):
        _uca(intra_exclude="pid")


def _var_head_grad(m, term):
    """Summed |gradient| of one loss term on the two variance heads' parameters."""
    m.zero_grad()
    m(_batch())[term].backward()
    heads = [p for n, p in m.named_parameters() if n.startswith(("image_var.", "text_var."))]
    return sum(float(p.grad.abs().sum()) for p in heads if p.grad is not None)


def test_intra_modal_contrast_can_train_the_means_only():
    only_intra = {"dcl": 0.0, "pcl_inter": 0.0, "rec": 0.0, "kl": 0.0}
    assert _var_head_grad(_uca(loss_weights=only_intra), "pcl_intra") > 0
    means_only = _uca(pcl_intra_means_only=True, loss_weights=only_intra)
    assert _var_head_grad(means_only, "pcl_intra") == 0.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in means_only.backbone.parameters())
    # the same noise as before: the intra loss's value does not change, only where its gradient goes
    a = _uca(loss_weights={"rec": 0.0})(_batch())
    b = _uca(pcl_intra_means_only=True, loss_weights={"rec": 0.0})(_batch())
    assert torch.allclose(a["pcl_intra"], b["pcl_intra"]) and torch.allclose(a["pcl_inter"], b["pcl_inter"])
    # the variance heads still learn from the other terms
    assert _var_head_grad(_uca(pcl_intra_means_only=True, loss_weights={"rec": 0.0}), "loss") > 0


def test_variance_head_can_see_the_embeddings_length():
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    blind, seeing = VarianceHead(64), VarianceHead(64, sees_length=True)
    assert torch.allclose(blind(x), blind(3.0 * x), atol=1e-5)  # LayerNorm removes the length
    assert not torch.allclose(seeing(x), seeing(3.0 * x), atol=1e-5)
    assert seeing.fc1.in_features == 65 and blind.fc1.in_features == 64
    pooled = VarianceHead(64, "attn_pool", sees_length=True)
    tokens = torch.randn(4, 5, 64)
    assert not torch.allclose(pooled(x, tokens), pooled(3.0 * x, tokens), atol=1e-5)
    m = _uca(var_sees_length=True)
    assert m.image_var.sees_length and m.text_var.fc1.in_features == 65
    m(_batch())["loss"].backward()


def test_entropy_hinge_holds_variances_up():
    floor = -9.0
    above = torch.full((3, 8), -8.0, requires_grad=True)
    loss = entropy_hinge(above, floor)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(above.grad.abs().sum()) == 0.0
    below = torch.tensor([[-10.0] * 8, [-8.0] * 8], requires_grad=True)  # one item below, one above
    loss = entropy_hinge(below, floor)
    assert float(loss.detach()) == pytest.approx(0.5 * 8 * 1.0 / 2)  # (H0 - H) of the item below, averaged over 2
    loss.backward()
    assert torch.all(below.grad[0] < 0) and torch.all(below.grad[1] == 0)  # descent raises log sigma^2
    # it is the Gaussian entropy gap: H from torch.distributions
    lv = torch.randn(2, 8) - 10
    h = torch.distributions.Normal(torch.zeros(2, 8), (0.5 * lv).exp()).entropy().sum(-1)
    h0 = torch.distributions.Normal(torch.zeros(8), torch.full((8,), floor / 2).exp()).entropy().sum()
    assert torch.isclose(entropy_hinge(lv, floor), (h0 - h).clamp_min(0).mean(), atol=1e-4)


def test_omre_style_terms_mean_vs_samples_and_entropy():
    omre = {"pcl_inter": 0.0, "pcl_intra": 0.0, "pcl_mean": 1.0, "entropy": 0.1, "rec": 0.0}
    m = _uca(num_samples=3, logvar_init=-12.0, loss_weights=omre)
    out = m(_batch())
    assert set(out) == {"dcl", "pcl_mean", "kl", "entropy", "loss"}
    assert float(out["entropy"]) > 0  # initialised below the -9 floor: the hinge pushes variances up
    assert torch.isclose(out["loss"], out["dcl"] + out["pcl_mean"] + 1e-4 * out["kl"] + 0.1 * out["entropy"])
    out["loss"].backward()
    assert m.image_var.fc2.bias.grad.sum() < 0  # gradient descent raises the log-variances
    # the mean-vs-samples term with zero variance is the mean-vs-mean contrast of K copies
    from tbps.methods.uca import _mean_vs_samples
    mu_t, _ = _gaussians(4, seed=1)
    mu_v, _ = _gaussians(4, seed=2)
    pids = torch.tensor([0, 0, 1, 2])
    copies = mu_v.repeat_interleave(3, 0)
    got = _mean_vs_samples(mu_t, copies, pids, pids.repeat_interleave(3), 0.1)
    want = 0.5 * (_direct_nce(mu_t, copies, pids, pids.repeat_interleave(3), 0.1)
                  + _direct_nce(copies, mu_t, pids.repeat_interleave(3), pids, 0.1))
    assert torch.isclose(got, want, atol=1e-5)


# ----------------------------------------------------------------------------- the method
def test_uca_registered_forward_returns_all_parts():
    assert "uca" in METHODS
    m = _uca(loss_weights={"id": 1.0})
    out = m(_batch())
    assert set(out) == {"dcl", "pcl_inter", "pcl_intra", "rec", "kl", "id", "loss"}
    w = m.cfg["loss_weights"]
    total = sum(w[k] * out[k] for k in out if k != "loss")
    assert torch.isclose(out["loss"], total)
    assert w == {"dcl": 1.0, "pcl_inter": 1.0, "pcl_intra": 0.5, "rec": 1.0, "kl": 1e-4, "id": 1.0,
                 "pcl_mean": 0.0, "entropy": 0.0}
    off = _uca(loss_weights={"rec": 0.0, "pcl_intra": 0.0, "kl": 0.0})
    assert set(off(_batch())) == {"dcl", "pcl_inter", "loss"}
    assert not hasattr(off, "cross_modal") and not hasattr(off, "classifier")


@pytest.mark.parametrize("var_head", ["mlp", "attn_pool"])
def test_gradients_reach_every_module(var_head):
    m = _uca(var_head=var_head, loss_weights={"id": 1.0})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_batch())
    out["loss"].backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad


def test_forward_is_deterministic_given_the_generator():
    m = _uca()
    other_seed = _batch(seed=0) | {"mask_generator": torch.Generator().manual_seed(9)}
    a, b, c = m(_batch(seed=0)), m(_batch(seed=0)), m(other_seed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["rec"], c["rec"]) and not torch.equal(a["pcl_inter"], c["pcl_inter"])
    assert torch.equal(a["dcl"], c["dcl"])  # no randomness in the distribution contrast


def test_attribute_masking_and_fallback():
    m = _uca()
    batch = _batch(B=8, L=12)
    flags = batch["attr_flags"]
    ids, labels = m.mask_caption(batch["tokens"]["ids"], batch["tokens"]["attention_mask"], flags,
                                 torch.Generator().manual_seed(0))
    masked = labels != -100
    assert masked.any(1).all()  # at least one masked token per caption
    assert not (masked[:4] & ~flags[:4]).any()  # captions with attributes: only attribute tokens
    assert masked[4:, 5:].any()  # captions without: random tokens anywhere (not the specials)
    assert not masked[:, 0].any() and not masked[:, -1].any()
    assert torch.equal(labels[masked], batch["tokens"]["ids"][masked])


@pytest.mark.parametrize("mode,extra", [("samples", 3), ("mean", 1), ("none", 0)])
def test_rec_points_switch_changes_decoder_inputs(mode, extra):
    m = _uca(rec_points=mode)
    seen = {}

    def hook(module, args, kwargs):
        seen["queries"], seen["memory"] = args[0], args[1]

    m.cross_modal.register_forward_pre_hook(hook, with_kwargs=True)
    batch = _batch(L=10)
    m(batch)
    n_patches = 1 + (128 // 16) * (64 // 16)
    assert seen["queries"].shape[1] == 10 + extra and seen["memory"].shape[1] == n_patches + extra
    if extra:
        pts = seen["memory"][:, n_patches:].float()
        assert torch.allclose(pts.norm(dim=-1), torch.ones_like(pts[..., 0]), atol=1e-3)  # points on the sphere
        with torch.no_grad():
            mu_v = m.encode_images(batch["images"])["emb"]
        spread = (pts - mu_v[:, None]).norm(dim=-1).max()
        assert (spread > 1e-4) if mode == "samples" else (spread < 1e-5)


def test_log_variance_init_and_clamp():
    head = VarianceHead(64, "mlp", init=-9.0, bounds=(-15.0, 2.0))
    lv = head(torch.randn(32, 64)).detach()
    assert abs(float(lv.mean()) + 9.0) < 0.2 and float(lv.min()) > -10.5 and float(lv.max()) < -7.5
    with torch.no_grad():
        head.fc2.bias.fill_(100.0)
    assert torch.all(head(torch.randn(4, 64)) == 2.0)
    with torch.no_grad():
        head.fc2.bias.fill_(-100.0)
    assert torch.all(head(torch.randn(4, 64)) == -15.0)


def test_scores_cosine_w2_csd_and_chunking():
    m = _uca(eval_scores=["cosine", "w2", "csd"], score_chunk=3)
    t, v = dict(zip(("emb", "logvar"), _gaussians(7, seed=4))), dict(zip(("emb", "logvar"), _gaussians(5, seed=5)))
    s = m.score(t, v)
    assert set(s) == {"t2i", "t2i-w2", "t2i-csd"}
    assert torch.allclose(s["t2i"], t["emb"] @ v["emb"].t())
    assert torch.allclose(s["t2i-w2"], -w2_distance(t["emb"], t["logvar"], v["emb"], v["logvar"]), atol=1e-6)
    assert torch.allclose(s["t2i-csd"], -csd_distance(t["emb"], t["logvar"], v["emb"], v["logvar"]), atol=1e-6)
    m2 = _uca(score="csd", eval_scores=[])  # the default also reports the other rankings
    assert set(m2.score(t, v)) == {"t2i"} and torch.allclose(m2.score(t, v)["t2i"], s["t2i-csd"])


def _planted_split(a=6.0, b=3.0, q=3000, d=32, seed=0):
    """Each query's top-1 is its own gallery image at W2 distance d_i; it is correct w.p. sigmoid(-a d + b)."""
    g = torch.Generator().manual_seed(seed)
    mu = F.normalize(torch.randn(q, d, generator=g), dim=-1)
    dist = torch.rand(q, generator=g) * 1.5 + 0.05
    q_lv = torch.log(dist / d)[:, None].expand(q, d).clone()  # ||sigma_q - 0||^2 = d_i
    g_lv = torch.full((q, d), -30.0)
    correct = torch.rand(q, generator=g) < torch.sigmoid(-a * dist + b)
    image_pids = list(range(q))
    caption_pids = [i if c else (i + 1) % q for i, c in enumerate(correct.tolist())]
    split = SimpleNamespace(caption_pids=caption_pids, image_pids=image_pids,
                            captions=["a man in a red shirt"] * q)
    return {"emb": mu, "logvar": q_lv}, {"emb": mu.clone(), "logvar": g_lv}, split


def test_calibration_fit_recovers_known_parameters_and_is_saved(tmp_path):
    m = _uca()
    assert float(m.calib_fitted) == 0.0
    t, v, split = _planted_split()
    m.on_validation(t, v, split)
    assert float(m.calib_fitted) == 1.0
    assert float(m.calib_a) == pytest.approx(6.0, rel=0.15) and float(m.calib_b) == pytest.approx(3.0, rel=0.15)
    save_file({k: x.contiguous() for k, x in m.state_dict().items()}, str(tmp_path / "m.safetensors"))
    fresh = _uca()
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    assert float(fresh.calib_a) == float(m.calib_a) and float(fresh.calib_fitted) == 1.0
    m_all = _uca(calibration="all")
    m_all.on_validation(t, v, split)
    assert float(m_all.calib_a) > 0  # closer pairs are more often matches


def test_extra_report_contents_and_files(tmp_path):
    m = _uca()
    t, v, split = _planted_split(q=400)
    # uncertainty grows with the planted distance, which drives the errors
    split.captions = ["a man in a red shirt, blue jeans, white shoes and a black backpack"] * 200 + ["a man"] * 200
    m.on_validation(t, v, split)
    scores = m.score(t, v)
    r = m.extra_report(t, v, split, scores, tmp_path / "report")
    bins = r["rank1_by_uncertainty_bin"]
    assert bins["n_bins"] == 10 and sum(bins["count"]) == 400
    assert bins["spearman"] < -0.8  # Rank-1 falls as uncertainty grows
    assert 0 <= r["risk_coverage"]["aurc"] <= 1 and r["risk_coverage"]["e_aurc"] >= 0
    assert 0 <= r["calibration"]["ece"] < 0.1 and r["calibration"]["fitted_on_val"]
    tv = r["terse_vs_detailed"]
    assert tv["terse"]["count"] == 200 and tv["detailed"]["count"] == 200
    assert tv["terse"]["mean_attribute_words"] == 0 and tv["detailed"]["mean_attribute_words"] >= 4
    assert (tmp_path / "report" / "uca_risk_coverage.png").is_file()
    json.dumps(r, allow_nan=False)  # strict JSON


def test_unfitted_calibration_reports_no_ece(tmp_path):
    m = _uca()
    t, v, split = _planted_split(q=200)
    cal = m.extra_report(t, v, split, m.score(t, v), None)["calibration"]
    assert cal["fitted_on_val"] is False and cal["ece"] is None and "val_from_train" in cal["note"]
    m.on_validation(t, v, split)
    cal = m.extra_report(t, v, split, m.score(t, v), None)["calibration"]
    assert cal["ece"] is not None and "note" not in cal


def test_collate_flags_mark_attribute_tokens():
    tok = ClipBpeTokenizer()
    captions = ["A man wearing a blue shirt.", "A person walking."]
    tb = tok.encode(captions, 16)
    flags = attribute_flags(captions, tb)
    assert flags.shape == (2, int(tb.attention_mask.sum(1).max()))
    words = [tok.decode([int(i)]).strip() for i in tb.ids[0, :flags.shape[1]][flags[0]]]
    assert words == ["blue", "shirt"] and not flags[1].any()


# ----------------------------------------------------------------------------- end to end (CLI)
SMALL_MODEL = [
    "backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
    "text_layers: 1, embed_dim: 64}",
    "method.cross_layers=1",
    "method.num_samples=3",
    "train.epochs=1",
    "train.batch_size=16",
    "train.log_every=2",
    "train.amp=null",
    "data.tokenizer_vocab_size=300",
]


def test_cli_train_and_eval_report_uncertainty(tmp_path, capsys):
    data = render_tiny_benchmark(tmp_path / "tiny")
    run = tmp_path / "run"
    assert main(cli_train_args("uca_tiny_scratch", data, run, SMALL_MODEL)) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("pcl_intra" in r and r["pcl_intra"] > 0 for r in log)  # balanced batches give intra positives
    weights = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
    assert float(weights["calib_fitted"]) == 1.0  # fitted on val before the best checkpoint was written
    capsys.readouterr()
    report = tmp_path / "report"
    out_json = tmp_path / "eval.json"
    assert main(["eval", str(run), "--split", "test", "--report-dir", str(report), "--json", str(out_json),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "rank1_by_uncertainty_bin" in printed and "terse_vs_detailed" in printed and "aurc" in printed
    result = json.loads(out_json.read_text())
    assert set(result["metrics"]) == {"t2i", "t2i-w2", "t2i-csd"}
    assert not math.isnan(result["extra"]["calibration"]["ece"])
    assert (report / "uca_risk_coverage.png").is_file() and (report / "uca_uncertainty.json").is_file()


def test_dataset_without_val_split_fits_calibration_on_held_out_train_ids(tmp_path, capsys):
    """ICFG-PEDES layout (train and test only): unfitted and reported absent by default; with
    data.val_from_train the calibration is fitted on held-out train identities."""
    fx = write_icfg_fixture(tmp_path / "icfg", n_ids=14, split_ids={"train": 10, "test": 4}, images_per_id=2,
                            captions_per_image=2)
    common = [*SMALL_MODEL, "data.dataset=icfg-pedes", "data.instances_per_id=2", "train.batch_size=8"]
    for holdout in (0.0, 0.3):
        run = tmp_path / f"run{holdout}"
        assert main(cli_train_args("uca_tiny_scratch", fx.root, run, [*common, f"data.val_from_train={holdout}"])) == 0
        weights = load_file(str(run / "checkpoints" / "best" / "model.safetensors"))
        assert float(weights["calib_fitted"]) == (1.0 if holdout else 0.0)
        out_json = tmp_path / f"eval{holdout}.json"
        assert main(["eval", str(run), "--split", "test", "--json", str(out_json), "--quiet"]) == 0
        cal = json.loads(out_json.read_text())["extra"]["calibration"]
        assert (cal["ece"] is None) == (not holdout) and cal["fitted_on_val"] == bool(holdout)
    capsys.readouterr()
