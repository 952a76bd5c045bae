"""CADA: losses against direct computations, hard negatives, pooling, attribute masking, re-ranking."""
import math

import pytest
import torch
import torch.nn.functional as F

from fixtures import cli_train_args, render_tiny_benchmark
from tbps.cli import main
from tbps.engine.experiment import load_experiment_config
from tbps.data.loader import tokens_to_dict
from tbps.data.tokenizers import TrainedTokenizer
from tbps.methods import METHODS, build_method
from tbps.methods.cada import ara_mask, group_pool, mine_hard_negatives, ndf_loss
from tbps.models import build_backbone

CAPTIONS = [
    "A man wearing a blue and white striped tank top, green pants and pink shoes.",
    "A woman in a red dress with a black handbag and white sneakers.",
    "The lady has long black hair and wears a yellow jacket and grey jeans.",
    "A young man with short hair, a grey hoodie, blue jeans, carrying a backpack.",
    "He walks.",
    "A person in a dark coat and brown boots holds an umbrella.",
    "A girl wearing a pink skirt, white t-shirt and a small red bag.",
    "The man has a black cap, a green jacket, khaki shorts and sandals.",
]
SMALL = dict(vision_width=64, vision_heads=2, vision_layers=1, text_width=64, text_heads=2, text_layers=2,
             embed_dim=32)


@pytest.fixture(scope="module")
def tok():
    return TrainedTokenizer.train(CAPTIONS * 3, vocab_size=400, extra_special=["[ENC]", "[DEC]"], min_frequency=1)


def _cada(tok, **cfg):
    torch.manual_seed(0)
    bb = build_backbone("tiny-blip", vocab_size=tok.vocab_size, **SMALL)
    return build_method("cada", cfg, bb, num_classes=4, tokenizer=tok)


def _batch(method, tok, B=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(B)]
    tb = tok.encode(caps, 48)
    batch = {"images": torch.randn(B, 3, 128, 64, generator=g), "tokens": tokens_to_dict(tb),
             "pids": torch.arange(B) % 4, "mask_generator": torch.Generator().manual_seed(seed), "captions": caps}
    batch.update(method.collate_extras(caps, tb))
    return batch


# ----------------------------------------------------------------------------- forward and gradients

def test_cada_registered_and_returns_all_loss_parts(tok):
    assert "cada" in METHODS
    m = _cada(tok)
    out = m(_batch(m, tok))
    assert set(out) == {"glb", "itm", "group", "atp", "ara", "loss"}
    assert torch.isclose(out["atp"], out["itm"] + out["group"])
    assert torch.isclose(out["loss"], out["glb"] + out["atp"] + 0.1 * out["ara"])
    assert all(torch.isfinite(v) for v in out.values())


def test_gradients_reach_every_module_and_weights_switch_parts_off(tok):
    m = _cada(tok)
    m(_batch(m, tok))["loss"].backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], no_grad
    paper = _cada(tok, loss_weights={"glb": 0.1, "ara": 1.0})
    out = paper(_batch(paper, tok))
    assert torch.isclose(out["loss"], 0.1 * out["glb"] + out["atp"] + out["ara"])
    only_glb = _cada(tok, loss_weights={"atp": 0.0, "ara": 0.0})
    assert set(only_glb(_batch(only_glb, tok))) == {"glb", "loss"}


def test_forward_variants_phrase_masking_and_official_pooling(tok):
    for cfg in ({"ara_masking": "phrase"}, {"group_pooling": "official", "official_group_len": 40},
                {"decoder_layers": 1, "groups": 3, "hard_negative_sim": "dot"}):
        m = _cada(tok, **cfg)
        out = m(_batch(m, tok))
        assert torch.isfinite(out["loss"]), cfg
    assert len(_cada(tok, decoder_layers=1).text_decoder.encoder.layer) == 1
    with pytest.raises(ValueError, match="official_group_len"):
        _cada(tok, group_pooling="official")  # 73 > the tiny context length 64


def test_needs_enc_and_dec_tokens_and_the_blip_layout(tok):
    plain = TrainedTokenizer.train(CAPTIONS, vocab_size=200, min_frequency=1)
    bb = build_backbone("tiny-blip", vocab_size=plain.vocab_size, **SMALL)
    with pytest.raises(ValueError, match=r"\[ENC\]"):
        build_method("cada", {}, bb, 4, plain)
    with pytest.raises(ValueError, match="blip"):
        build_method("cada", {}, build_backbone("tiny-clip", vocab_size=tok.vocab_size), 4, tok)


# ----------------------------------------------------------------------------- NDF

def test_ndf_equals_a_direct_elementwise_computation():
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    pids = torch.tensor([0, 1, 0, 2, 1])
    s, eps, N = 50.0, 1e-8, 5
    vn = [x / math.sqrt(sum(float(a) ** 2 for a in x)) for x in v]
    tn = [x / math.sqrt(sum(float(a) ** 2 for a in x)) for x in t]
    logits = [[s * sum(float(a) * float(b) for a, b in zip(vn[i], tn[j])) for j in range(N)] for i in range(N)]

    def direction(lg):
        ce = kl = 0.0
        for i in range(N):
            m = max(lg[i])
            z = sum(math.exp(x - m) for x in lg[i])
            p = [math.exp(x - m) / z for x in lg[i]]
            n_pos = sum(int(pids[i] == pids[j]) for j in range(N))
            q = [int(pids[i] == pids[j]) / n_pos for j in range(N)]
            for j in range(N):
                logp, logq = math.log(p[j]), math.log(q[j] + eps)
                ce -= q[j] * logp
                kl += p[j] * (logp - logq) + q[j] * (logq - logp)
        return ce / N + kl / N / N

    expected = (direction(logits) + direction([list(col) for col in zip(*logits)])) / 2
    assert ndf_loss(v, t, pids, logit_scale=s).item() == pytest.approx(expected, rel=1e-4)


# ----------------------------------------------------------------------------- hard negatives

def test_hard_negatives_exclude_every_same_identity_candidate():
    # items 0 and 1 share a pid and are near-identical: the most similar *other* item is the same person
    pids = torch.tensor([7, 7, 3, 3, 5])
    base = torch.eye(5, 6)
    emb = base.clone()
    emb[1] = base[0] + 0.05 * base[1]      # 1 ~ 0
    emb[3] = base[2] + 0.05 * base[3]      # 3 ~ 2
    emb[4] = base[0] * 0.6 + base[4]       # the closest other-identity item to 0 and 1
    emb[2] = emb[2] + 0.3 * base[0]        # second closest to 0 / 1
    text, image = emb, emb + 0.01
    neg_img, neg_txt, ok_t, ok_i = mine_hard_negatives(text, image, pids, pids)
    assert ok_t.all() and ok_i.all()
    assert (pids[neg_img] != pids).all() and (pids[neg_txt] != pids).all()
    sim = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).t()
    assert sim[0].masked_fill(pids == pids[0], -9).argmax() == neg_img[0] == 4
    # a batch of one identity has no negative at all: flagged, never a positive passed off as one
    _, _, ok_t, ok_i = mine_hard_negatives(text[:2], image[:2], pids[:2], pids[:2])
    assert not ok_t.any() and not ok_i.any()


def test_sampled_hard_negatives_never_share_identity_and_follow_the_softmax():
    torch.manual_seed(0)
    pids = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    text, image = torch.randn(8, 16), torch.randn(8, 16)
    argmax_img, argmax_txt, _, _ = mine_hard_negatives(text, image, pids, pids)
    # a very sharp softmax is the argmax
    img, txt, _, _ = mine_hard_negatives(text, image, pids, pids, sample_scale=1e4)
    assert torch.equal(img, argmax_img) and torch.equal(txt, argmax_txt)
    # a flat one spreads over every other identity, and never picks the anchor's own
    draws = torch.stack([mine_hard_negatives(text, image, pids, pids, sample_scale=0.0)[0] for _ in range(400)])
    assert (pids[draws] != pids).all()
    assert len(set(draws[:, 0].tolist())) == 6  # text 0 (pid 0): the 6 images of pids 1-6
    # at a moderate scale the hardest negative is the most frequent draw, but not the only one
    draws = torch.stack([mine_hard_negatives(text, image, pids, pids, sample_scale=5.0)[0] for _ in range(400)])
    counts = torch.bincount(draws[:, 2], minlength=8)
    assert counts.argmax() == argmax_img[2] and counts.max() < 400


def test_cada_rejects_unknown_hard_negative_mode(tok):
    with pytest.raises(ValueError, match="hard_negative='hardest'"):
        _cada(tok, hard_negative="hardest")


def test_itm_rows_without_a_negative_are_left_out(tok):
    m = _cada(tok)
    batch = _batch(m, tok)
    batch["pids"] = torch.zeros(8, dtype=torch.long)  # one identity: only the 8 positives count
    out = m(batch)
    assert torch.isfinite(out["itm"]) and torch.isfinite(out["group"])


# ----------------------------------------------------------------------------- group pooling

def test_group_pooling_padding_aware_excludes_padding():
    h = torch.arange(1, 9, dtype=torch.float)[None, :, None].repeat(2, 1, 1)  # value = position + 1
    h[:, 6:] = 1000.0  # padding garbage
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    pooled, valid = group_pool(h, mask, groups=2)
    assert valid.all()
    # row 0: positions 1..4 -> {1,2}, {3,4}; row 1: positions 1..5 -> {1,2,3}, {4,5}  (values are pos + 1)
    assert pooled[0, :, 0].tolist() == [2.5, 4.5]
    assert pooled[1, :, 0].tolist() == [3.0, 5.5]
    short = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)  # [ENC] [SEP]: one position, 2 groups
    assert group_pool(h[:1], short, groups=2)[1].tolist() == [[True, False]]


def test_group_pooling_official_uses_fixed_halves_including_padding():
    L = 73
    h = torch.randn(2, L, 4)
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, :10], mask[1, :30] = True, True
    pooled, valid = group_pool(h, mask, groups=2, mode="official", official_len=73)
    assert valid.all()
    assert torch.allclose(pooled[:, 0], h[:, 1:37].mean(1), atol=1e-6)
    assert torch.allclose(pooled[:, 1], h[:, 37:73].mean(1), atol=1e-6)
    with pytest.raises(ValueError, match="pad"):
        group_pool(h[:, :40], mask[:, :40], mode="official", official_len=73)


def test_official_pooling_pads_the_text_so_padding_states_are_real(tok):
    m = _cada(tok, group_pooling="official", official_group_len=50)
    seen = []
    orig = m.backbone.text.forward
    m.backbone.text.forward = lambda ids, *a, **k: (seen.append(ids.shape[1]), orig(ids, *a, **k))[1]
    m(_batch(m, tok))
    assert 50 in seen  # the image-grounded passes ran on the padded length


# ----------------------------------------------------------------------------- ARA masking

def test_ara_token_masking_only_touches_attribute_tokens(tok):
    m = _cada(tok)
    caps = CAPTIONS * 40
    tb = tok.encode(caps, 48)
    td = tokens_to_dict(tb)
    ex = m.collate_extras(caps, tb)
    ids, mask, flags = td["ids"], td["attention_mask"], ex["attr_flags"]
    assert flags.shape == ids.shape
    specials = torch.zeros_like(mask)
    for s in tok.special_ids:
        specials |= ids == s
    assert not (flags & (specials | ~mask)).any()
    first = tok.encode([CAPTIONS[0]], 48)
    words = [tok.token_surface(i) for i, f in zip(first.ids[0].tolist(), ex["attr_flags"][0].tolist()) if f]
    assert {"blue", "white", "pink", "shoes"} <= set(words) and "wearing" not in words
    out, labels = ara_mask(ids, mask, tok.special_ids, tok.mask_id, torch.Generator().manual_seed(0), flags=flags,
                           prob=0.4)
    chosen = labels != -100
    assert (chosen <= flags).all() and not (chosen & (specials | ~mask)).any()
    assert (out[chosen] == tok.mask_id).all() and torch.equal(out[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum().item() / flags.sum().item()
    assert 0.34 < rate < 0.46, rate


def test_ara_phrase_masking_masks_whole_phrases(tok):
    m = _cada(tok)
    caps = CAPTIONS * 40
    tb = tok.encode(caps, 48)
    td = tokens_to_dict(tb)
    pid = m.collate_extras(caps, tb)["attr_phrase_ids"]
    _, labels = ara_mask(td["ids"], td["attention_mask"], tok.special_ids, tok.mask_id,
                         torch.Generator().manual_seed(0), phrase_ids=pid, mode="phrase", prob=0.8)
    chosen = labels != -100
    assert (chosen <= (pid >= 0)).all()
    n_phr = n_masked = 0
    for r in range(pid.shape[0]):
        for k in pid[r].unique().tolist():
            if k < 0:
                continue
            members = chosen[r][pid[r] == k]
            assert members.all() or not members.any()  # all or nothing per phrase
            n_phr += 1
            n_masked += int(members.all())
    assert 0.72 < n_masked / n_phr < 0.88
    # the blue-and-white phrase is one unit: "blue", "and", "white", "striped", "tank", "top"
    surf = [tok.token_surface(i) for i in td["ids"][0].tolist()]
    blue = pid[0][surf.index("blue")]
    phrase = [s for s, k in zip(surf, pid[0].tolist()) if k == blue]
    assert blue >= 0 and {"white", "striped", "top"} <= set(phrase) and "wearing" not in phrase


# ----------------------------------------------------------------------------- re-ranking

def _features(m, tok, n_img=12, n_txt=10):
    g = torch.Generator().manual_seed(3)
    m.eval()
    images = m.encode_images(torch.randn(n_img, 3, 128, 64, generator=g))
    caps = [CAPTIONS[i % len(CAPTIONS)] for i in range(n_txt)]
    texts = [m.encode_texts(tokens_to_dict(tok.encode(caps[i:i + 4], 48))) for i in range(0, n_txt, 4)]
    return {k: torch.cat([t[k] for t in texts]) for k in texts[0]}, images


def test_rerank_rescores_the_top_k_and_matches_an_unbatched_reference(tok):
    m = _cada(tok, rerank_k=[3, 5])
    texts, images = _features(m, tok)
    assert images["tokens"].dtype == torch.float16 and texts["ids"].shape[1] == m.backbone.cfg.context_length
    scores = m.score(texts, images)
    assert set(scores) == {"t2i", "t2i-rerank@3", "t2i-rerank@5"}
    cos = scores["t2i"]
    final = scores["t2i-rerank@5"]
    top = cos.topk(5, dim=1).indices
    in_top = torch.zeros_like(cos, dtype=torch.bool).scatter_(1, top, True)
    assert torch.allclose(final[~in_top], cos[~in_top] - 100)
    assert (final[in_top] > -50).all()
    for q in (0, 4, 9):  # reference: one (text, image) pair per forward pass
        n = int(texts["mask"][q].sum())
        ids = texts["ids"][q:q + 1, :n].clone()
        ids[0, 0] = tok.token_id("[ENC]")
        for g in top[q].tolist():
            h = m.backbone.text(ids, texts["mask"][q:q + 1, :n], images["tokens"][g:g + 1].float())
            ref = m.itm_head(h[:, 0])[0, 1] + cos[q, g]
            assert final[q, g].item() == pytest.approx(ref.item(), abs=1e-4)
    # the chunk size changes nothing
    again = m.rerank(cos, texts, images, 5, batch_pairs=7)
    assert torch.allclose(again, final, atol=1e-5)
    # k larger than the gallery re-ranks everything
    assert (m.score(texts, images, rerank_k=100)["t2i-rerank@100"] > -50).all()


# ----------------------------------------------------------------------------- full size and configs

def test_blip_base_cada_instantiates_with_random_weights():
    class BertTok:  # bert-base-uncased + [DEC], [ENC] as BLIP adds them
        vocab_size, pad_id, mask_id, bos_id, eos_id = 30524, 0, 103, 101, 102
        special_ids = {0, 100, 101, 102, 103, 30522, 30523}

        def token_id(self, name):
            return {"[DEC]": 30522, "[ENC]": 30523}[name]

    torch.manual_seed(0)
    m = build_method("cada", {}, build_backbone("blip-base"), 11003, BertTok())
    n = sum(p.numel() for p in m.parameters())
    assert 350e6 < n < 400e6, n  # ViT-B + BERT-base w/ cross-attention + 12-layer decoder + heads
    assert len(m.text_decoder.encoder.layer) == 12 and m.lm_head.decoder.out_features == 30524
    m.eval()
    with torch.no_grad():
        ids = torch.tensor([[101, 1037, 2158, 4147, 1037, 2630, 3797, 102]])
        emb, _ = m.backbone.encode_text(ids, torch.ones_like(ids, dtype=torch.bool))
    assert emb.shape == (1, 256) and torch.isfinite(emb).all()


def test_cada_configs_load():
    cfgs = {n: load_experiment_config(n)
            for n in ("cada", "cada_tiny", "cada_paper_weights", "cada_cuhk", "cada_icfg", "cada_rstp")}
    assert cfgs["cada"]["method"]["loss_weights"] == {"glb": 1.0, "atp": 1.0, "ara": 0.1}
    assert cfgs["cada_paper_weights"]["method"]["loss_weights"] == {"glb": 0.1, "atp": 1.0, "ara": 1.0}
    for n in ("cada_cuhk", "cada_icfg", "cada_rstp"):
        c = cfgs[n]
        assert c["backbone"]["name"] == "blip-base" and c["data"]["max_text_len"] == 73
        assert c["train"]["batch_size"] == 120 and c["train"]["optimizer"] == "adamw"
        assert c["train"]["lr"] == 1e-5 and c["train"]["weight_decay"] == 0.05 and c["train"]["epochs"] == 30
        assert c["data"]["image_size"] == [224, 224]
    assert cfgs["cada_tiny"]["data"]["tokenizer_extra_special"] == ["[ENC]", "[DEC]"]


# ----------------------------------------------------------------------------- end to end through the CLI

TINY_RUN = [
    "backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, text_heads: 2, "
    "text_layers: 1, embed_dim: 32}",
    "method.decoder_layers=1",
    "method.rerank_k=[4]",
    "train.epochs=1",
    "train.batch_size=16",
    "train.stop_after_steps=null",
    "train.log_every=2",
    "data.tokenizer_vocab_size=300",
]


def test_train_and_eval_cada_through_the_cli(tmp_path, capsys):
    data = render_tiny_benchmark(tmp_path / "tiny")
    run = tmp_path / "run"
    assert main(cli_train_args("cada_tiny_scratch", data, run, TINY_RUN)) == 0
    assert (run / "checkpoints/best/model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test", "--quiet", "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "t2i-rerank@4" in printed and "\nt2i " in printed
    import json

    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert set(metrics) == {"t2i", "t2i-rerank@4"}
    for m in metrics.values():
        assert 0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100
