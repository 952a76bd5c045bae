"""Pretrained weights from local files (tbps.models.pretrained).

Every test writes a tiny random checkpoint in the real format (an OpenAI TorchScript archive, a
BLIP `{"model": state_dict}` file, Hugging Face folders), loads it into our model and checks our
outputs against `transformers` running the same weights, to 1e-5. Full-size key/shape agreement
with ViT-B/16 CLIP and BLIP base is checked on the meta device (no memory, no compute).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import BlipConfig, BlipForImageTextRetrieval, CLIPConfig, CLIPModel  # noqa: E402
from transformers.models.blip.modeling_blip_text import BlipTextLMHeadModel  # noqa: E402

from tbps.data.tokenizers import (BertWordPieceTokenizer, ClipBpeTokenizer, default_clip_bpe_path,  # noqa: E402
                                  find_clip_bpe, load_tokenizer)
from tbps.engine.build import build_model, build_tokenizer  # noqa: E402
from tbps.methods import build_method  # noqa: E402
from tbps.models import Backbone, BackboneConfig, backbone_config  # noqa: E402
from tbps.models.pretrained import PretrainedLoadError, detect_layout, load_pretrained, load_state  # noqa: E402

ATOL = 1e-5
IMG = (96, 32)   # our input size: a 6x2 patch grid, interpolated from the checkpoints' 4x4 (64x64)

# ----------------------------------------------------------------------------- helpers


def _perturb(model: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (LayerNorm weights and biases included) so that any mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _ids(vocab: int, eot: int, lengths: list[int], L: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), L, dtype=torch.long)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(5, vocab - 3, (n,), generator=g)
        ids[r, n - 1] = eot
        mask[r, :n] = 1
    return ids, mask


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    assert err < ATOL, f"max abs difference {err}"


# ----------------------------------------------------------------------------- CLIP

CLIP_VOCAB, CLIP_EOT, CLIP_CTX = 100, 99, 16


def _hf_clip(seed: int = 0, half: bool = False) -> CLIPModel:
    cfg = CLIPConfig(
        text_config=dict(vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=CLIP_CTX, eos_token_id=CLIP_EOT,
                         bos_token_id=CLIP_EOT - 1, pad_token_id=0, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16, hidden_act="quick_gelu"),
        projection_dim=24)
    torch.manual_seed(seed)
    model = _perturb(CLIPModel(cfg), seed)
    if half:  # OpenAI's archive stores float16: make the reference use exactly those values
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    return model


def _our_clip(**overrides) -> Backbone:
    cfg = BackboneConfig(family="clip", image_size=IMG, patch_size=16, vision_width=48, vision_layers=2,
                         vision_heads=4, text_width=32, text_layers=2, text_heads=4, context_length=CLIP_CTX,
                         vocab_size=CLIP_VOCAB, embed_dim=24).with_overrides(**overrides)
    torch.manual_seed(123)
    return Backbone(cfg).eval()


def hf_clip_to_openai(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face CLIP names -> the names of OpenAI's ViT-B-16.pt (written independently of tbps)."""
    out = {"logit_scale": sd["logit_scale"], "visual.proj": sd["visual_projection.weight"].t(),
           "text_projection": sd["text_projection.weight"].t(),
           "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"]}
    for wb in ("weight", "bias"):
        out[f"visual.ln_pre.{wb}"] = sd[f"vision_model.pre_layrnorm.{wb}"]
        out[f"visual.ln_post.{wb}"] = sd[f"vision_model.post_layernorm.{wb}"]
        out[f"ln_final.{wb}"] = sd[f"text_model.final_layer_norm.{wb}"]
    for tower, dst in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
        n = 0
        while f"{tower}.encoder.layers.{n}.layer_norm1.weight" in sd:
            s, d = f"{tower}.encoder.layers.{n}.", f"{dst}.resblocks.{n}."
            for wb in ("weight", "bias"):
                out[d + f"attn.in_proj_{wb}"] = torch.cat([sd[s + f"self_attn.{x}_proj.{wb}"] for x in "qkv"])
                out[d + f"attn.out_proj.{wb}"] = sd[s + f"self_attn.out_proj.{wb}"]
                out[d + f"ln_1.{wb}"] = sd[s + f"layer_norm1.{wb}"]
                out[d + f"ln_2.{wb}"] = sd[s + f"layer_norm2.{wb}"]
                out[d + f"mlp.c_fc.{wb}"] = sd[s + f"mlp.fc1.{wb}"]
                out[d + f"mlp.c_proj.{wb}"] = sd[s + f"mlp.fc2.{wb}"]
            n += 1
    return out


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state: dict[str, torch.Tensor], path: Path) -> None:
    """A real TorchScript archive (torch.jit.save) whose parameters carry the given dotted names."""
    root = _Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        mod = root
        for name in parents:
            if not hasattr(mod, name):
                mod.add_module(name, _Holder())
            mod = getattr(mod, name)
        mod.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
    torch.jit.save(torch.jit.script(root), str(path))


def _check_clip(ours: Backbone, hf: CLIPModel) -> None:
    images = torch.randn(2, 3, *IMG, generator=torch.Generator().manual_seed(1))
    ids, mask = _ids(CLIP_VOCAB, CLIP_EOT, [9, CLIP_CTX], CLIP_CTX)
    with torch.no_grad():
        emb, tokens = ours.encode_image(images)
        ref = hf.get_image_features(pixel_values=images, interpolate_pos_encoding=True).pooler_output
        _close(emb, ref)
        hidden = hf.vision_model(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
        _close(tokens, hf.vision_model.post_layernorm(hidden))  # ours normalises every token (as IRRA)
        text_emb, _ = ours.encode_text(ids, mask)
        _close(text_emb, hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_openai_torchscript_archive_matches_transformers(tmp_path: Path) -> None:
    hf = _hf_clip(seed=0, half=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in hf_clip_to_openai(hf.state_dict()).items()}
    path = tmp_path / "ViT-B-16.pt"
    save_torchscript(state, path)
    ours = _our_clip()
    report = load_pretrained(ours, path)
    assert report.layout == "openai-clip" and report.source == "TorchScript archive"
    assert report.ignored == ["logit_scale"]
    assert any("4x4 -> 6x2" in n for n in report.notes), report.notes
    _check_clip(ours, hf)


def test_openai_plain_state_dict_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    hf = _hf_clip(seed=1)
    state = hf_clip_to_openai(hf.state_dict())
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "clip.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    for name in ("clip.pth", "clip.safetensors"):
        ours = _our_clip()
        report = load_pretrained(ours, tmp_path / name)
        assert report.layout == "openai-clip"
        _check_clip(ours, hf)


def _write_hf_clip_tokenizer_files(folder: Path) -> None:
    """merges.txt + vocab.json as a Hugging Face CLIP folder has them, derived from OpenAI's BPE file."""
    from tbps.data.tokenizers import _byte_alphabet

    lines = gzip.decompress(default_clip_bpe_path().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    alphabet = [c for _, c in _byte_alphabet()]
    vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")


def test_hf_clip_folder_weights_and_tokenizer(tmp_path: Path) -> None:
    hf = _hf_clip(seed=2)
    folder = tmp_path / "clip-vit-base-patch16"
    hf.save_pretrained(folder)
    ours = _our_clip()
    report = load_pretrained(ours, folder)
    assert report.layout == "hf-clip" and "model.safetensors" in report.source
    _check_clip(ours, hf)

    # Tokenizer files from the checkpoint folder: the same ids as the copy shipped in tbps.
    _write_hf_clip_tokenizer_files(folder)
    assert find_clip_bpe(None, folder) == folder / "merges.txt"
    assert find_clip_bpe(None, None) == default_clip_bpe_path()
    cfg = {"data": {"tokenizer": "clip-bpe"}, "backbone": {"pretrained": str(folder)}}
    tok = build_tokenizer(cfg, None, None)
    shipped = ClipBpeTokenizer()
    caption = "A woman in a red coat, carrying a black backpack and jekyll shoes."
    assert tok.encode([caption], 77).ids.tolist() == shipped.encode([caption], 77).ids.tolist()
    assert isinstance(load_tokenizer(folder), ClipBpeTokenizer)
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab["a</w>"], vocab["the</w>"] = vocab["the</w>"], vocab["a</w>"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="do not belong together"):
        load_tokenizer(folder)
    with pytest.raises(FileNotFoundError, match="data.tokenizer_path"):
        find_clip_bpe(tmp_path / "nowhere", None)


# ----------------------------------------------------------------------------- BLIP / CADA

BLIP_WORDS = ["a", "man", "woman", "red", "blue", "coat", "shirt", "bag", "black", "shoes", "with", "and", "in",
              "the", "pants", "white", "##s", "long", "hair", "wearing"]


def _write_bert_vocab(folder: Path, words: list[str] = BLIP_WORDS) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return len(tokens) + 2  # + [DEC], [ENC] as BLIP adds them


BLIP_VOCAB = len(BLIP_WORDS) + 7
BLIP_CTX = 40


def _hf_blip(seed: int) -> tuple[BlipForImageTextRetrieval, BlipTextLMHeadModel]:
    cfg = BlipConfig(
        text_config=dict(vocab_size=BLIP_VOCAB, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=BLIP_CTX, encoder_hidden_size=48,
                         pad_token_id=0, bos_token_id=BLIP_VOCAB - 2, sep_token_id=3),
        vision_config=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16, layer_norm_eps=1e-6),  # timm's eps, as in BLIP
        image_text_hidden_size=32)
    torch.manual_seed(seed)
    retrieval = _perturb(BlipForImageTextRetrieval(cfg), seed)
    decoder = _perturb(BlipTextLMHeadModel(cfg.text_config), seed + 100)
    return retrieval, decoder


def hf_blip_to_original(retrieval: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor] | None
                        ) -> dict[str, torch.Tensor]:
    """Hugging Face BLIP names -> salesforce/BLIP names as in model_base.pth (written independently of tbps)."""
    out: dict[str, torch.Tensor] = {}
    block = {"layer_norm1": "norm1", "self_attn.qkv": "attn.qkv", "self_attn.projection": "attn.proj",
             "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for k, v in retrieval.items():
        if k == "vision_model.embeddings.class_embedding":
            out["visual_encoder.cls_token"] = v
        elif k == "vision_model.embeddings.position_embedding":
            out["visual_encoder.pos_embed"] = v
        elif k.startswith("vision_model.embeddings.patch_embedding."):
            out["visual_encoder.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("vision_model.post_layernorm."):
            out["visual_encoder.norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("vision_model.encoder.layers."):
            n, rest = k[len("vision_model.encoder.layers."):].split(".", 1)
            mod, wb = rest.rsplit(".", 1)
            out[f"visual_encoder.blocks.{n}.{block[mod]}.{wb}"] = v
        else:  # text_encoder.*, vision_proj, text_proj, itm_head: same names
            out[k] = v
    for k, v in (decoder or {}).items():
        out["text_decoder." + k] = v
    return out


def _blip_cfg(pretrained: Path, tokenizer: str, **backbone) -> dict:
    return {
        "backbone": {"name": "tiny-blip", "pretrained": str(pretrained), **backbone,
                     "overrides": {"image_size": list(IMG), "patch_size": 16, "vision_width": 48, "vision_layers": 2,
                                   "vision_heads": 4, "text_width": 64, "text_layers": 2, "text_heads": 4,
                                   "context_length": BLIP_CTX, "embed_dim": 32}},
        "data": {"tokenizer": tokenizer, "max_text_len": BLIP_CTX, "image_size": list(IMG)},
        "method": {"name": "cada"},
    }


def _check_blip(method, retrieval: BlipForImageTextRetrieval, decoder: BlipTextLMHeadModel | None) -> None:
    images = torch.randn(2, 3, *IMG, generator=torch.Generator().manual_seed(3))
    ids, mask = _ids(BLIP_VOCAB, 3, [7, 12], 12, seed=4)
    ids[:, 0] = method.enc_id
    bb = method.backbone
    with torch.no_grad():
        emb, tokens = bb.encode_image(images)
        hidden = retrieval.vision_model(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state
        _close(tokens, hidden)
        _close(emb, retrieval.vision_proj(hidden[:, 0]))
        text_emb, _ = bb.encode_text(ids, mask)
        ref = retrieval.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        _close(text_emb, retrieval.text_proj(ref))
        itm = method.itm_head(bb.text(ids, mask, tokens)[:, 0])
        ref_itm = retrieval(input_ids=ids, pixel_values=images, attention_mask=mask, use_itm_head=True,
                            interpolate_pos_encoding=True).itm_score
        _close(itm, ref_itm)
        if decoder is not None:
            dec_ids = ids.clone()
            dec_ids[:, 0] = method.dec_id
            logits = method.lm_head(method.text_decoder(dec_ids, mask, tokens, causal=True))
            ref_logits = decoder(input_ids=dec_ids, attention_mask=mask, encoder_hidden_states=hidden).logits
            real = mask.bool()
            _close(logits[real], ref_logits[real])


def test_blip_model_base_pth_fills_cada(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    retrieval, decoder = _hf_blip(seed=5)
    state = hf_blip_to_original(retrieval.state_dict(), decoder.state_dict())
    # what else model_base.pth carries: momentum encoders, queues, the temperature, position ids
    state.update({"visual_encoder_m." + k[len("visual_encoder."):]: v.clone() for k, v in state.items()
                  if k.startswith("visual_encoder.")})
    state.update({"image_queue": torch.randn(32, 8), "text_queue": torch.randn(32, 8),
                  "queue_ptr": torch.zeros(1, dtype=torch.long), "temp": torch.tensor(0.07),
                  "text_encoder.embeddings.position_ids": torch.arange(BLIP_CTX)[None]})
    pth = tmp_path / "model_base.pth"
    torch.save({"model": state, "epoch": 19}, pth)
    vocab_dir = tmp_path / "bert-base-uncased"
    assert _write_bert_vocab(vocab_dir) == BLIP_VOCAB

    cfg = _blip_cfg(pth, str(vocab_dir))
    tok = build_tokenizer(cfg, None, None)
    assert isinstance(tok, BertWordPieceTokenizer) and tok.vocab_size == BLIP_VOCAB
    method = build_model(cfg, tok, num_classes=5).eval()
    out = capsys.readouterr().out
    n_expected = sum(1 for k in method.state_dict() if not k.startswith("group_head."))  # CADA's own head
    assert f"pretrained: loaded {n_expected} tensors from {pth}" in out
    assert "skipped" in out and "image position grid 4x4 -> 6x2" in out
    _check_blip(method, retrieval, decoder)


def test_hf_blip_retrieval_folder_needs_allow_missing_for_the_decoder(tmp_path: Path) -> None:
    retrieval, _ = _hf_blip(seed=6)
    folder = tmp_path / "blip-itm-base"
    retrieval.save_pretrained(folder)
    _write_bert_vocab(folder)  # the folder's own vocab.txt is the tokenizer (data.tokenizer: bert-wordpiece)
    cfg = _blip_cfg(folder, "bert-wordpiece")
    tok = build_tokenizer(cfg, None, None)
    with pytest.raises(PretrainedLoadError) as err:
        build_model(cfg, tok, num_classes=5)
    msg = str(err.value)
    assert "missing keys" in msg and "text_decoder.* (all 56 tensors: the checkpoint has no text_decoder)" in msg
    assert "lm_head.* (all 6 tensors" in msg and "pretrained_allow_missing: ['lm_head', 'text_decoder']" in msg
    cfg = _blip_cfg(folder, "bert-wordpiece", pretrained_allow_missing=["text_decoder", "lm_head"])
    method = build_model(cfg, tok, num_classes=5).eval()
    _check_blip(method, retrieval, None)


# ----------------------------------------------------------------------------- errors


def test_missing_files_name_the_path_and_purpose(tmp_path: Path) -> None:
    cfg = _blip_cfg(tmp_path / "nope" / "model_base.pth", str(tmp_path / "vocab"))
    _write_bert_vocab(tmp_path / "vocab")
    tok = build_tokenizer(cfg, None, None)
    with pytest.raises(FileNotFoundError, match=r"backbone.pretrained .*not found: .*nope/model_base.pth"):
        build_model(cfg, tok, num_classes=5)
    empty = tmp_path / "empty-hf"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="holds no weights file"):
        load_pretrained(_our_clip(), empty)
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2)}, empty / "pytorch_model.bin")
    with pytest.raises(PretrainedLoadError, match="BERT folder .*data.tokenizer"):
        load_pretrained(_our_clip(), empty)
    with pytest.raises(FileNotFoundError, match="bert-wordpiece needs bert-base-uncased's vocab.txt"):
        build_tokenizer({"data": {"tokenizer": "bert-wordpiece"}, "backbone": {}}, None, None)
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        build_tokenizer({"data": {"tokenizer": str(tmp_path / "missing-bert")}, "backbone": {}}, None, None)


def test_key_mismatches_are_listed(tmp_path: Path) -> None:
    state = hf_clip_to_openai(_hf_clip(seed=7).state_dict())
    del state["visual.ln_post.weight"]
    state["visual.extra.weight"] = torch.zeros(3)
    state["bogus_head.weight"] = torch.zeros(3)
    with pytest.raises(PretrainedLoadError) as err:
        load_state(_our_clip(), state)
    msg = str(err.value)
    assert "1 missing keys" in msg and "backbone.visual.ln_post.weight" in msg
    assert "unexpected keys" in msg and "bogus_head.weight" in msg and "visual.extra.weight" in msg

    state = hf_clip_to_openai(_hf_clip(seed=7).state_dict())
    with pytest.raises(PretrainedLoadError, match=r"transformer.resblocks.\{1\}.attn.in_proj_weight"):
        load_state(_our_clip(vision_layers=1), state)  # fewer layers than the checkpoint
    with pytest.raises(PretrainedLoadError, match=r"token_embedding.weight: \[100, 32\] vs \[101, 32\](.|\n)*vocab"):
        load_state(_our_clip(vocab_size=101), state)
    with pytest.raises(PretrainedLoadError, match="unrecognised checkpoint layout"):
        detect_layout({"foo.weight": torch.zeros(1)})


def test_wrong_family_and_untrusted_pickle(tmp_path: Path) -> None:
    state = hf_clip_to_openai(_hf_clip(seed=8).state_dict())
    vocab = tmp_path / "v"
    _write_bert_vocab(vocab)
    cfg = _blip_cfg(tmp_path / "x.pt", str(vocab))
    tok = build_tokenizer(cfg, None, None)
    method = build_model(cfg, tok, num_classes=5, load_pretrained=False)
    with pytest.raises(PretrainedLoadError, match="clip layout.*blip layout"):
        load_state(method, state)

    # a pickled Python object (many training checkpoints carry their argparse namespace): refused unless trusted
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-5)}, tmp_path / "opaque.pth")
    with pytest.raises(PretrainedLoadError, match="pretrained_trust_pickle"):
        load_pretrained(_our_clip(), tmp_path / "opaque.pth")
    assert load_pretrained(_our_clip(), tmp_path / "opaque.pth", trust_pickle=True).layout == "openai-clip"


# ----------------------------------------------------------------------------- full size, on the meta device


def test_full_size_layouts_match_vit_b16_clip_and_blip_base(tmp_path: Path) -> None:
    """Real ViT-B/16 CLIP and BLIP base key sets and shapes fill clip-vit-b16 / blip-base + CADA exactly."""
    with torch.device("meta"):
        clip_hf = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=8, max_position_embeddings=77),
            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=224, patch_size=16), projection_dim=512))
        ours = Backbone(backbone_config("clip-vit-b16"))
    for state in (clip_hf.state_dict(), hf_clip_to_openai(clip_hf.state_dict())):
        report = load_state(ours, state)
        assert report.loaded == len(ours.state_dict())
        assert "image position grid 14x14 -> 24x8 (bicubic)" in report.notes

    words = [f"w{i}" for i in range(30522 - 5)]
    vocab_dir = tmp_path / "bert"
    _write_bert_vocab(vocab_dir, words)
    tok = load_tokenizer(vocab_dir)
    assert tok.vocab_size == 30524 and (tok.token_id("[DEC]"), tok.token_id("[ENC]")) == (30522, 30523)
    with torch.device("meta"):
        bcfg = BlipConfig()  # BLIP base: ViT-B/16 at 384, BERT-base with cross-attention, 30524 ids
        retrieval = BlipForImageTextRetrieval(bcfg)
        decoder = BlipTextLMHeadModel(bcfg.text_config)
        cada = build_method("cada", {}, Backbone(backbone_config("blip-base", vocab_size=tok.vocab_size)), 5, tok)
    state = hf_blip_to_original(retrieval.state_dict(), decoder.state_dict())
    report = load_state(cada, state)
    expected = {k for k in cada.state_dict() if not k.startswith("group_head.")}
    assert report.loaded == len(expected)
    assert "image position grid 24x24 -> 14x14 (bicubic)" in report.notes


@pytest.mark.parametrize("method", ["irra", "cada", "uca"])
@pytest.mark.parametrize("dataset", ["cuhk", "icfg", "rstp"])
def test_paper_configs_name_their_weights(method: str, dataset: str) -> None:
    from tbps.engine.experiment import load_experiment_config

    cfg = load_experiment_config(Path(__file__).parents[1] / "src" / "tbps" / "configs" / f"{method}_{dataset}.yaml")
    family = backbone_config(cfg["backbone"]["name"]).family
    want = {"irra": ("clip", "ViT-B-16.pt"), "uca": ("clip", "ViT-B-16.pt"), "cada": ("blip", "model_base.pth")}
    assert (family, Path(cfg["backbone"]["pretrained"]).name) == want[method]
    assert cfg["data"]["dataset"] == {"cuhk": "cuhk-pedes", "icfg": "icfg-pedes", "rstp": "rstpreid"}[dataset]
