import pytest
import torch

from tbps.models import BACKBONE_CONFIGS, build_backbone
from tbps.models.layers import MultiheadAttention, attend
from tbps.models.vision import interpolate_pos_embedding


def _tokens(B=2, L=12, vocab=100):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 8:] = False
    return ids, mask


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-blip"])
def test_tiny_backbone_shapes(name):
    torch.manual_seed(0)
    m = build_backbone(name, vocab_size=100)
    H, W = m.cfg.image_size
    g, tok = m.encode_image(torch.randn(2, 3, H, W))
    assert g.shape == (2, m.cfg.embed_dim)
    assert tok.shape == (2, 1 + (H // 16) * (W // 16), m.cfg.vision_width)
    ids, mask = _tokens()
    t, ttok = m.encode_text(ids, mask)
    assert t.shape == (2, m.cfg.embed_dim) and ttok.shape == (2, 12, m.cfg.text_width)


def test_full_size_configs_instantiate_with_random_weights():
    clip = build_backbone("clip-vit-b16")
    n = sum(p.numel() for p in clip.parameters())
    assert 149e6 < n < 150.5e6  # OpenAI CLIP ViT-B/16 has 149.6M parameters (IRRA puts <|mask|> on an existing id)
    assert clip.visual.grid == (24, 8) and clip.visual.positional_embedding.shape == (1 + 24 * 8, 768)
    blip = build_backbone("blip-base")
    assert blip.visual.grid == (14, 14)
    assert blip.text.encoder.layer[0].crossattention is not None
    assert len(blip.text.encoder.layer) == 12
    # forward one small input through the full-size text towers
    ids, mask = _tokens(vocab=1000)
    with torch.no_grad():
        assert clip.encode_text(ids, mask)[0].shape == (2, 512)
        assert blip.encode_text(ids, mask)[0].shape == (2, 256)


def test_clip_text_global_is_taken_at_eot():
    torch.manual_seed(0)
    m = build_backbone("tiny-clip", vocab_size=100).eval()
    ids, mask = _tokens()
    eot = mask.long().sum(1) - 1
    g, tok = m.encode_text(ids, mask, eot)
    assert torch.allclose(g[1], m.text_proj(tok[1, 7]), atol=1e-6)
    # causal attention: changing padding after the EOT does not change the global feature
    ids2 = ids.clone()
    ids2[1, 9:] = 3
    assert torch.allclose(m.encode_text(ids2, mask, eot)[0][1], g[1], atol=1e-5)


def test_bert_padding_does_not_leak_and_cross_attention_reads_image():
    torch.manual_seed(0)
    m = build_backbone("tiny-blip", vocab_size=100).eval()
    ids, mask = _tokens()
    out = m.text(ids, mask)
    ids2 = ids.clone()
    ids2[1, 8:] = 7  # padding content changes
    assert torch.allclose(m.text(ids2, mask)[1, :8], out[1, :8], atol=1e-5)
    img = m.visual(torch.randn(2, 3, 128, 64))
    grounded, weights = m.text(ids, mask, image_tokens=img, return_cross_weights=True)
    assert not torch.allclose(grounded, out)
    assert len(weights) == 4 and weights[0].shape == (2, 4, 12, img.shape[1])
    assert torch.allclose(weights[0].sum(-1), torch.ones(2, 4, 12), atol=1e-5)
    # the explicit-weights path and the fused kernel agree
    assert torch.allclose(m.text(ids, mask, image_tokens=img), grounded, atol=1e-5)


def test_attend_causal_and_padding_match_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    out, w = attend(q, k, v, pad, causal=True, return_weights=True)
    fused, _ = attend(q, k, v, pad, causal=True)
    assert torch.allclose(out, fused, atol=1e-5)
    assert torch.all(w[1, :, :, 3:] < 1e-6)  # padded keys get no weight
    assert torch.all(w[:, :, 0, 1:] < 1e-6)  # first query sees only itself


def test_cross_attention_with_other_width():
    attn = MultiheadAttention(32, 4, kv_width=48)
    assert attn(torch.randn(2, 5, 32), torch.randn(2, 7, 48)).shape == (2, 5, 32)


def test_position_interpolation_keeps_cls_and_shape():
    pos = torch.randn(1 + 14 * 14, 16)
    new = interpolate_pos_embedding(pos, (14, 14), (24, 8))
    assert new.shape == (1 + 24 * 8, 16)
    assert torch.equal(new[0], pos[0])
    assert torch.equal(interpolate_pos_embedding(pos, (14, 14), (14, 14)), pos)


def test_bad_image_size_and_family_errors():
    m = build_backbone("tiny-clip", vocab_size=50)
    with pytest.raises(ValueError, match="128x64"):
        m.encode_image(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="family"):
        build_backbone("tiny-clip", family="nope")
    with pytest.raises(KeyError, match="known"):
        build_backbone("vit-huge")
    assert set(BACKBONE_CONFIGS) >= {"clip-vit-b16", "blip-base", "tiny-clip", "tiny-blip"}
