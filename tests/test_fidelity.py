"""Fidelity to the official IRRA and CADA code: one hand-built case per switch (README, "Fidelity to
the official code"), each checking that the official setting does what the official code does."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tbps.cli import CONFIG_DIR
from tbps.engine.experiment import load_experiment_config
from tbps.data.tokenizers import TrainedTokenizer
from tbps.data.transforms import CLIP_MEAN, build_transform
from tbps.engine.build import build_transforms
from tbps.engine.checkpoint import load_model_weights, save_checkpoint
from tbps.engine.trainer import build_optimizer, parameter_settings
from tbps.methods import build_method
from tbps.methods.masking import _replacement_pool, mask_tokens, pad_tokens
from tbps.models import build_backbone
from tbps.models.pretrained import load_state


def test_erased_box_holds_the_clip_mean_in_normalised_space() -> None:
    """Official: torchvision RandomErasing(value=mean) after Normalize, so the box holds the mean's numbers."""
    img = Image.new("RGB", (64, 128), (10, 200, 30))
    base = build_transform(128, 64, train=False)(img)
    t = build_transform(128, 64, train=True, flip=False, random_crop=False, erasing=1.0)  # default fill
    x = t(img, torch.Generator().manual_seed(3))
    box = (x != base).any(0)
    assert box.any()
    for c in range(3):
        assert torch.allclose(x[c][box], torch.full_like(x[c][box], CLIP_MEAN[c]))
    for name in ("irra_cuhk", "uca_rstp", "cada_icfg"):  # what a paper run gets through the engine
        train, _ = build_transforms(_paper(name), (128, 64))
        assert train.erase_fill == CLIP_MEAN and train.erasing == 0.5


# ----------------------------------------------------------------------------- IRRA: optimizer

class FakeTokenizer:
    vocab_size, pad_id, mask_id, bos_id, eos_id = 60, 0, 4, 2, 3
    special_ids = {0, 1, 2, 3, 4}


def _irra(**cfg):
    torch.manual_seed(0)
    return build_method("irra", cfg, build_backbone("tiny-clip", vocab_size=60), num_classes=4,
                        tokenizer=FakeTokenizer())


def _paper(name: str) -> dict:
    return load_experiment_config(name)


def test_paper_optimizer_is_adam_with_the_official_epsilon() -> None:
    opt = build_optimizer(_irra(), _paper("irra_cuhk")["train"])
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["eps"] == 1e-3
    assert build_optimizer(_irra(), _paper("irra_tiny")["train"]).defaults["eps"] == 1e-8


# parameter -> (lr factor, weight decay): official IRRA solver/build.py vs tbps's default rule
OFFICIAL_GROUPS = {
    "backbone.visual.conv1.weight": (1.0, 4e-5),
    "backbone.visual.class_embedding": (1.0, 4e-5),      # 1-d, not a bias: decayed
    "backbone.visual.ln_pre.weight": (1.0, 4e-5),
    "backbone.visual.ln_pre.bias": (2.0, 0.0),
    "cross_modal.ln_pre_t.weight": (1.0, 4e-5),          # no "cross" in the official name (ln_pre_t)
    "cross_modal.ln_post.bias": (2.0, 0.0),
    "cross_modal.cross_attn.in_proj_weight": (5.0, 4e-5),
    "cross_modal.cross_attn.in_proj_bias": (2.0, 0.0),   # the bias rule comes after "cross"
    "cross_modal.transformer.resblocks.0.mlp.c_fc.weight": (5.0, 4e-5),
    "classifier.weight": (5.0, 4e-5),
    "classifier.bias": (5.0, 0.0),                       # the head rule comes after the bias rule
    "mlm_head.ln.bias": (5.0, 0.0),
}
TBPS_GROUPS = {
    "backbone.visual.conv1.weight": (1.0, 4e-5),
    "backbone.visual.class_embedding": (1.0, 0.0),
    "backbone.visual.ln_pre.weight": (1.0, 0.0),
    "backbone.visual.ln_pre.bias": (1.0, 0.0),
    "cross_modal.ln_pre_t.weight": (5.0, 0.0),
    "cross_modal.ln_post.bias": (5.0, 0.0),
    "cross_modal.cross_attn.in_proj_weight": (5.0, 4e-5),
    "cross_modal.cross_attn.in_proj_bias": (5.0, 0.0),
    "cross_modal.transformer.resblocks.0.mlp.c_fc.weight": (5.0, 4e-5),
    "classifier.weight": (5.0, 4e-5),
    "classifier.bias": (5.0, 0.0),
    "mlm_head.ln.bias": (5.0, 0.0),
}


def test_parameter_groups_official_and_tbps_rules() -> None:
    m = _irra()
    official = parameter_settings(m, _paper("irra_cuhk")["train"])
    tbps = parameter_settings(m, {**_paper("irra_cuhk")["train"], "param_groups": None})
    for name in OFFICIAL_GROUPS:
        assert official[name] == pytest.approx(OFFICIAL_GROUPS[name]), name
        assert tbps[name] == pytest.approx(TBPS_GROUPS[name]), name
    # tbps's rule written as rules gives the same settings for every parameter
    as_rules = [{"match": r"^(?!backbone\.)", "lr_mult": 5.0}, {"max_ndim": 1, "weight_decay": 0.0}]
    assert parameter_settings(m, {"weight_decay": 4e-5, "param_groups": as_rules}) == tbps
    # and the optimizer holds exactly those settings
    opt = build_optimizer(m, _paper("irra_cuhk")["train"])
    params = dict(m.named_parameters())
    for g in opt.param_groups:
        for p in g["params"]:
            name = next(n for n, q in params.items() if q is p)
            assert (g["lr"] / 1e-5, g["weight_decay"]) == pytest.approx(official[name])


def test_parameter_group_rules_are_validated() -> None:
    with pytest.raises(ValueError, match=r"param_groups\[0\]"):
        parameter_settings(_irra(), {"weight_decay": 4e-5, "param_groups": [{"pattern": "bias"}]})
    with pytest.raises(ValueError, match="regular expression"):
        parameter_settings(_irra(), {"weight_decay": 4e-5, "param_groups": [{"match": "(", "lr_mult": 2.0}]})


# ----------------------------------------------------------------------------- IRRA / UCA: CLIP position table

def test_position_table_is_resized_bilinearly_in_the_paper_configs() -> None:
    """A 4x4 grid loaded into an 8x4 model: official resize_pos_embed = bilinear F.interpolate."""
    from test_pretrained import _hf_clip, _our_clip, hf_clip_to_openai

    state = hf_clip_to_openai(_hf_clip(seed=3).state_dict())
    pos = state["visual.positional_embedding"]  # [1 + 4*4, 48]
    grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = {m: F.interpolate(grid, size=(8, 4), mode=m).permute(0, 2, 3, 1).reshape(32, -1) for m in ("bilinear",
                                                                                                     "bicubic")}
    assert not torch.allclose(want["bilinear"], want["bicubic"])
    mode = _paper("irra_cuhk")["backbone"]["pos_interpolation"]
    assert mode == "bilinear" and _paper("irra_tiny")["backbone"]["pos_interpolation"] == "bicubic"
    for m in ("bilinear", "bicubic"):
        ours = _our_clip(image_size=(128, 64))
        report = load_state(ours, state, pos_interpolation=m)
        got = ours.visual.positional_embedding.detach()
        assert torch.allclose(got[1:], want[m], atol=1e-6) and torch.equal(got[0], pos[0])
        assert any(f"4x4 -> 8x4 ({m})" in n for n in report.notes)
    with pytest.raises(ValueError, match="backbone.pos_interpolation"):
        load_state(_our_clip(image_size=(128, 64)), state, pos_interpolation="nearest")


# ----------------------------------------------------------------------------- IRRA: the MLM branch

def _captions(B: int = 6, L: int = 12, seed: int = 0, extra_padding: int = 0) -> dict:
    """Captions of different lengths: [bos=2] words [eos=3] then padding id 0 (masked out)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(B, L + extra_padding, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    eot = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        n = L - (b % 4) * 2  # real length
        ids[b, :n] = torch.randint(5, 60, (n,), generator=g)
        ids[b, 0], ids[b, n - 1] = 2, 3
        mask[b, :n], eot[b] = True, n - 1
    return {"images": torch.randn(B, 3, 128, 64, generator=g),
            "tokens": {"ids": ids, "attention_mask": mask, "eot_index": eot},
            "pids": torch.arange(B) % 3, "mask_generator": torch.Generator().manual_seed(seed)}


def test_global_losses_see_the_masked_caption_when_official() -> None:
    for on in (False, True):
        m = _irra(global_on_masked_caption=on)
        seen = []
        encode = m.backbone.encode_text
        m.backbone.encode_text = lambda ids, *a: seen.append(ids.clone()) or encode(ids, *a)
        batch = _captions()
        m(batch)
        masked = m._masked_caption(batch["tokens"], torch.Generator().manual_seed(0))
        assert len(seen) == 1  # the one text pass whose EOT feature SDM and ID use
        assert torch.equal(seen[0], masked["ids"] if on else batch["tokens"]["ids"])
        assert not torch.equal(masked["ids"], batch["tokens"]["ids"])


def test_official_masking_uses_position_one_and_never_id_zero() -> None:
    ids = torch.tensor([[2, 7, 0, 9, 3, 0], [2, 8, 11, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)  # id 0 at [0, 2] is real
    g = torch.Generator().manual_seed(0)
    out, labels = mask_tokens(ids, mask, {2, 3, 4}, 4, 60, g, prob=0.0, fallback="first", never_ids=frozenset({0}))
    assert torch.equal(out[:, 1], torch.tensor([4, 4])) and torch.equal(labels[:, 1], ids[:, 1])
    assert (labels[:, [0, 2, 3, 4, 5]] == -100).all() and torch.equal(out[:, 2:], ids[:, 2:])
    out, labels = mask_tokens(ids, mask, {2, 3, 4}, 4, 60, g, prob=1.0, fallback="first", never_ids=frozenset({0}))
    assert labels[0, 2] == -100 and out[0, 2] == 0  # id 0 is never masked
    assert 0 not in _replacement_pool(60, frozenset({2, 3, 4, 0})).tolist()
    for seed in range(20):  # nor drawn as a random replacement
        out, labels = mask_tokens(ids.repeat(50, 1), mask.repeat(50, 1), {2, 3, 4}, 4, 6,
                                  torch.Generator().manual_seed(seed), prob=1.0, never_ids=frozenset({0}))
        assert not ((out == 0) & (labels != -100)).any()
    m = _irra(mlm_masking="official", mlm_prob=0.0)
    masked = m._masked_caption(_captions()["tokens"], torch.Generator().manual_seed(0))
    assert (masked["ids"][:, 1] == 4).all() and ((masked["labels"] != -100).sum(1) == 1).all()


def test_mlm_padding_mask_and_context_make_the_loss_independent_of_the_batch_padding() -> None:
    batch = _captions()

    def mlm(padding: str, extra: int) -> float:
        """The MLM loss on the same masked captions with `extra` more padding columns."""
        m = _irra(mlm_padding=padding)
        masked = m._masked_caption(batch["tokens"], torch.Generator().manual_seed(0))
        ids, att = pad_tokens(masked["ids"], masked["attention_mask"], masked["ids"].shape[1] + extra, 0)
        labels = torch.cat([masked["labels"], masked["labels"].new_full((len(ids), extra), -100)], 1)
        with torch.no_grad():
            _, image_tokens = m.backbone.encode_image(batch["images"])
            return float(m._mlm_loss({"ids": ids, "labels": labels, "attention_mask": att}, image_tokens))

    assert mlm("mask", 0) == pytest.approx(mlm("mask", 9), abs=1e-5)
    assert abs(mlm("none", 0) - mlm("none", 9)) > 1e-4  # the former behaviour depends on it
    # context: every batch is padded to the context length before masking, as the official code
    m = _irra(mlm_padding="context", loss_weights={"sdm": 0.0, "id": 0.0})
    with torch.no_grad():
        assert float(m(_captions())["mlm"]) == pytest.approx(float(m(_captions(extra_padding=9))["mlm"]), abs=1e-5)
    masked = _irra(mlm_padding="context")._masked_caption(batch["tokens"], torch.Generator().manual_seed(0))
    assert masked["ids"].shape[1] == 64 and (masked["ids"][:, 12:] == 0).all()  # padded to the context length


# ----------------------------------------------------------------------------- CADA

@pytest.fixture(scope="module")
def wordpiece():
    from test_cada import CAPTIONS

    return TrainedTokenizer.train(CAPTIONS * 3, vocab_size=400, extra_special=["[ENC]", "[DEC]"], min_frequency=1)


def _cada_and_batch(tok, dropout: float = 0.0, **cfg):
    from test_cada import SMALL, _batch

    torch.manual_seed(0)
    bb = build_backbone("tiny-blip", vocab_size=tok.vocab_size, text_dropout=dropout, **SMALL)
    m = build_method("cada", cfg, bb, num_classes=4, tokenizer=tok)
    return m, _batch(m, tok)


def test_ara_decoder_starts_with_cls_when_official(wordpiece):
    for start, want in (("cls", wordpiece.bos_id), ("dec", wordpiece.token_id("[DEC]"))):
        m, batch = _cada_and_batch(wordpiece, ara_start_token=start, loss_weights={"glb": 0.0, "atp": 0.0})
        seen = []
        m.text_decoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
        m(batch)
        assert len(seen) == 1 and (seen[0][:, 0] == want).all()
    assert wordpiece.token_id("[CLS]") == wordpiece.bos_id


def test_pad_row_of_both_word_embeddings_never_gets_a_gradient(wordpiece):
    """Official pooling averages padding states, so without padding_idx the [PAD] row would learn."""
    m, batch = _cada_and_batch(wordpiece, group_pooling="official", official_group_len=40)
    assert wordpiece.pad_id == 0 and (batch["tokens"]["ids"] == 0).any()
    m(batch)["loss"].backward()
    for emb in (m.backbone.text.embeddings.word_embeddings, m.text_decoder.embeddings.word_embeddings):
        assert emb.padding_idx == 0
        assert torch.equal(emb.weight.grad[0], torch.zeros_like(emb.weight.grad[0]))
        assert emb.weight.grad[1:].abs().sum() > 0


def test_text_dropout_acts_in_training_only(wordpiece):
    m, batch = _cada_and_batch(wordpiece, dropout=0.1)
    ids, mask = batch["tokens"]["ids"], batch["tokens"]["attention_mask"]
    _, image_tokens = m.backbone.encode_image(batch["images"])
    for tower in (lambda: m.backbone.text(ids, mask, image_tokens), lambda: m.text_decoder(ids, mask, image_tokens,
                                                                                           causal=True)):
        m.train()
        assert not torch.allclose(tower(), tower())
        m.eval()
        assert torch.equal(tower(), tower())
    m0, _ = _cada_and_batch(wordpiece, dropout=0.0)
    m0.train()
    assert torch.equal(m0.backbone.text(ids, mask, image_tokens), m0.backbone.text(ids, mask, image_tokens))
    assert build_backbone("blip-base", text_layers=1, vision_layers=1).cfg.text_dropout == 0.1


def test_tied_lm_head_shares_storage_through_training_and_checkpoints(wordpiece, tmp_path):
    m, batch = _cada_and_batch(wordpiece, tie_lm_head=True)
    emb = m.text_decoder.embeddings.word_embeddings.weight
    assert m.lm_head.decoder.weight is emb
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(batch)["loss"].backward()
    opt.step()
    assert m.lm_head.decoder.weight.data_ptr() == emb.data_ptr()
    save_checkpoint(tmp_path / "ckpt", m, None, {})
    fresh, _ = _cada_and_batch(wordpiece, tie_lm_head=True)
    load_model_weights(tmp_path / "ckpt", fresh)
    assert torch.equal(fresh.text_decoder.embeddings.word_embeddings.weight, emb)
    assert fresh.lm_head.decoder.weight is fresh.text_decoder.embeddings.word_embeddings.weight
    untied, _ = _cada_and_batch(wordpiece)
    assert untied.lm_head.decoder.weight.data_ptr() != untied.text_decoder.embeddings.word_embeddings.weight.data_ptr()


# ----------------------------------------------------------------------------- the paper configs

@pytest.mark.parametrize("dataset", ["cuhk", "icfg", "rstp"])
def test_paper_configs_select_every_official_switch(dataset: str) -> None:
    for method in ("irra", "uca"):
        c = _paper(f"{method}_{dataset}")
        t = c["train"]
        assert t["optimizer"] == "adam" and t["eps"] == 1e-3 and t["amp"] == "fp16"
        assert [r["match"] for r in t["param_groups"]][1] == "bias" and t["param_groups"][1]["lr_mult"] == 2.0
        assert c["backbone"]["pos_interpolation"] == "bilinear"
        assert c["data"]["augment"]["erasing"] == 0.5 and c["data"]["augment"]["erase_fill"] == "mean"
    irra = _paper(f"irra_{dataset}")["method"]
    assert irra["global_on_masked_caption"] is True
    assert irra["mlm_masking"] == "official" and irra["mlm_padding"] == "context"
    cada = _paper(f"cada_{dataset}")
    m = cada["method"]
    assert m["hard_negative_sim"] == "dot" and m["group_pooling"] == "official" and m["official_group_len"] == 73
    assert m["ara_start_token"] == "cls" and m["tie_lm_head"] is True and m["hard_negative"] == "argmax"
    assert cada["backbone"]["overrides"]["text_dropout"] == 0.1
    assert cada["data"]["augment"]["erase_fill"] == "mean"


def test_tiny_configs_keep_their_behaviour() -> None:
    irra = _paper("irra_tiny_scratch")
    assert irra["method"]["global_on_masked_caption"] is False and irra["method"]["mlm_masking"] == "tbps"
    assert irra["method"]["mlm_padding"] == "none" and irra["train"]["param_groups"] is None
    assert irra["train"]["eps"] == 1e-8 and irra["backbone"]["pos_interpolation"] == "bicubic"
    cada = _paper("cada_tiny_scratch")["method"]
    assert cada["hard_negative_sim"] == "cosine" and cada["group_pooling"] == "padding_aware"
    assert cada["ara_start_token"] == "dec" and cada["tie_lm_head"] is False
    assert "text_dropout" not in _paper("cada_tiny_scratch")["backbone"]["overrides"]
