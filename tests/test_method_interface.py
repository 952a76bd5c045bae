"""The `Method` contract: declared capabilities, real no-op hooks the engine calls directly, and the
search-time `rank` that shares its scoring with evaluation."""
from __future__ import annotations

import pytest
import torch

from tbps.engine.experiment import load_experiment_config
from tbps.data.records import EvalSplit
from tbps.data.tokenizers import TrainedTokenizer
from tbps.engine import evaluator
from tbps.engine.build import build_model
from tbps.methods import Capabilities, Method, Ranking

SMALL = ("backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, text_heads: 2, "
         "text_layers: 1, embed_dim: 16}")
CAPTIONS = ["a man in a red coat with a black bag", "a woman in blue jeans and white shoes"] * 3


def _build(config: str, *extra: str) -> Method:
    cfg = load_experiment_config(config, [SMALL, "train.device=cpu", *extra])
    tok = TrainedTokenizer.train(CAPTIONS, vocab_size=150, extra_special=["[ENC]", "[DEC]"], min_frequency=1)
    torch.manual_seed(0)
    return build_model(cfg, tok, num_classes=4).eval()


@pytest.fixture(scope="module")
def methods() -> dict[str, Method]:
    return {"irra": _build("irra_tiny_scratch", "method.cross_layers=1"), "clip_ft": _build("clip_ft_tiny"),
            "uca": _build("uca_tiny_scratch", "method.cross_layers=1", "method.num_samples=2"),
            "cada": _build("cada_tiny_scratch", "method.decoder_layers=1", "method.rerank_k=[3]")}


def test_each_method_declares_what_it_offers_and_knows_its_name(methods):
    for name, m in methods.items():
        assert m.name == name
    caps = {name: m.capabilities() for name, m in methods.items()}
    assert caps["irra"] == caps["clip_ft"] == Capabilities()
    assert caps["cada"].rerank and caps["cada"].association_maps and caps["cada"].default_rerank == 3
    assert caps["cada"].index_features == ("emb", "tokens") and caps["cada"].caption_extras
    assert caps["uca"].uncertainty and not caps["uca"].rerank and caps["uca"].index_features == ("emb", "logvar")
    # what every method's encode_images returns covers the features its search needs stored
    for name, m in methods.items():
        imgs = torch.randn(2, 3, *m.backbone.cfg.image_size)
        assert set(caps[name].index_features) <= set(m.encode_images(imgs)), name


def test_the_hooks_are_documented_no_ops_on_the_base_class(methods):
    m = methods["irra"]
    assert type(m).collate_extras is Method.collate_extras and Method.collate_extras.__doc__
    assert m.collate_extras(["a man"], None) == {}
    assert m.on_validation({}, {}, None) is None
    assert m.extra_report({}, {}, None, {}, None) is None
    with pytest.raises(ValueError, match="association maps need a method that declares them; irra"):
        m.association_maps(torch.zeros(1, 3, 8, 8), "a man", 16)


class _Recording(Method):
    """A method whose hooks record that the engine called them."""

    def __init__(self, method: Method) -> None:
        super().__init__(method.cfg, method.backbone, method.num_classes, method.tokenizer)
        self.calls: list[str] = []

    def on_validation(self, text_feats, image_feats, split) -> None:
        self.calls.append("on_validation")

    def extra_report(self, text_feats, image_feats, split, scores, out_dir):
        self.calls.append("extra_report")
        return {"queries": int(scores["t2i"].shape[0])}


def test_the_evaluator_calls_the_hooks_and_reports_extra_only_when_given(methods, monkeypatch):
    feats = ({"emb": torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)},
             {"emb": torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)})
    monkeypatch.setattr(evaluator, "encode_split", lambda *a, **k: feats)
    split = EvalSplit(["a.png", "b.png"], [0, 1], ["x", "y", "z"], [0, 1, 1], [0, 1, 1])
    plain = evaluator.evaluate(methods["irra"], split, None, None, 16, torch.device("cpu"), validation=True)
    assert "extra" not in plain and set(plain) == {"t2i"}
    rec = _Recording(methods["irra"])
    out = evaluator.evaluate(rec, split, None, None, 16, torch.device("cpu"), validation=True)
    assert rec.calls == ["on_validation", "extra_report"] and out["extra"] == {"queries": 3}


def _candidates(m: Method, n: int = 6):
    images = torch.randn(n, 3, *m.backbone.cfg.image_size, generator=torch.Generator().manual_seed(1))
    feats = m.encode_images(images)
    from tbps.data.loader import tokens_to_dict

    query = m.encode_texts(tokens_to_dict(m.tokenizer.encode([CAPTIONS[0]], 16)))
    return query, feats


@pytest.mark.parametrize("name", ["irra", "clip_ft", "uca", "cada"])
def test_rank_scores_candidates_exactly_as_score_scores_the_gallery(methods, name):
    m = methods[name]
    query, feats = _candidates(m)
    first = (query["emb"] @ feats["emb"].t())[0]
    ranking = m.rank(query, feats, first)
    assert isinstance(ranking, Ranking) and torch.allclose(ranking.scores, m.score(query, feats)["t2i"][0])
    if name == "uca":
        assert ranking.query_uncertainty > 0 and ranking.calibrated is False
        assert ((ranking.match_probability >= 0) & (ranking.match_probability <= 1)).all()
    if name == "cada":
        reranked = m.rank(query, feats, first, rerank=3)
        assert torch.allclose(reranked.scores, m.score(query, feats, rerank_k=3)["t2i-rerank@3"][0], atol=1e-5)
        assert int(reranked.reranked.sum()) == 3
        p = reranked.match_probability
        assert torch.isnan(p[~reranked.reranked]).all() and ((p[reranked.reranked] >= 0) & (p[reranked.reranked] <= 1)).all()
        # the probability is the matching head's softmax, the logit its re-ranking score
        assert torch.allclose(reranked.scores[reranked.reranked] - first[reranked.reranked],
                              torch.logit(p[reranked.reranked]) + _other_logit(m, query, feats, reranked), atol=1e-4)


def _other_logit(m, query, feats, ranking) -> torch.Tensor:
    """logit(p) = match - other, so match = logit(p) + other: recompute the "not matched" logit."""
    idx = ranking.reranked.nonzero()[:, 0]
    ids, mask = query["ids"].expand(len(idx), -1).clone(), query["mask"].expand(len(idx), -1)
    L = int(mask[0].sum())
    ids = ids[:, :L]
    ids[:, 0] = m.enc_id
    hidden = m.backbone.text(ids, mask[:, :L], feats["tokens"][idx].to(m.itm_head.weight.dtype))
    return m.itm_head(hidden[:, 0]).float()[:, 0]
