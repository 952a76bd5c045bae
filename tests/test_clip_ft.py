"""clip_ft, the fourth method: one file plus configs, and every command works with it unchanged."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from search_fixtures import clip_ft_index, clip_ft_run, clip_ft_searcher, gallery, tiny_benchmark  # noqa: F401
from tbps.cli import CONFIG_DIR, main
from tbps.engine.experiment import load_experiment_config
from tbps.methods import METHODS, Capabilities
from tbps.methods.clip_ft import CLIPFineTune, clip_loss
from tbps.retrieval.serve import create_app


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Searching sets OpenMP's thread count (faiss_index.search, threads=1), which torch shares; put it
    back so that tests running after these (bitwise resume checks) train with the usual threads."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_clip_loss_is_symmetric_infonce_with_the_diagonal_as_positives():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale = torch.tensor(10.0)
    logits = scale * F.normalize(t, dim=-1) @ F.normalize(v, dim=-1).t()
    expected = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert torch.allclose(clip_loss(v, t, scale), expected, atol=1e-6)
    # identical identities get no special treatment: only the paired item is a positive
    aligned = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    assert clip_loss(aligned, aligned, torch.tensor(100.0)) < 0.05


def _method(**cfg):
    from tbps.data.tokenizers import TrainedTokenizer
    from tbps.engine.build import build_model

    c = load_experiment_config("clip_ft_tiny", ["backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, "
                                     "text_width: 32, text_heads: 2, text_layers: 1, embed_dim: 16}",
                                     *[f"method.{k}={v}" for k, v in cfg.items()]])
    tok = TrainedTokenizer.train(["a man in a red coat", "a woman with a bag"] * 4, vocab_size=120, min_frequency=1)
    return build_model(c, tok, num_classes=3), tok


def test_clip_ft_learns_its_temperature_from_clip_init_and_has_no_identity_loss():
    m, tok = _method()
    assert isinstance(m, CLIPFineTune) and m.name == "clip_ft" and METHODS.get("clip_ft") is CLIPFineTune
    assert float(m.log_logit_scale.detach()) == pytest.approx(math.log(1 / 0.07))
    assert "log_logit_scale" in m.new_parameter_names() and not hasattr(m, "classifier")
    from tbps.data.loader import tokens_to_dict

    batch = {"images": torch.randn(4, 3, *m.backbone.cfg.image_size),
             "tokens": tokens_to_dict(tok.encode(["a man in a red coat", "a woman", "a bag", "red"], 16)),
             "pids": torch.tensor([0, 0, 1, 2])}
    out = m(batch)
    assert set(out) == {"itc", "loss", "logit_scale"} and torch.equal(out["loss"], out["itc"])
    out["loss"].backward()
    assert m.log_logit_scale.grad is not None and m.log_logit_scale.grad != 0
    with torch.no_grad():
        m.log_logit_scale.fill_(10.0)
    assert float(m.logit_scale().detach()) == pytest.approx(100.0)  # CLIP's clamp
    assert m.capabilities() == Capabilities()  # cosine ranking, nothing more
    with pytest.raises(ValueError, match="temperature_init"):
        _method(temperature_init=0)


def test_clip_ft_works_with_train_eval_index_search_serve_export(clip_ft_run, clip_ft_index, clip_ft_searcher,
                                                                 gallery, tmp_path, capsys):
    # train ran through `tbps train --config clip_ft_tiny` (the fixture); eval, index, search, serve, export here
    assert main(["eval", str(clip_ft_run), "--split", "test", "--json", str(tmp_path / "m.json"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "t2i" in json.dumps(metrics) and capsys.readouterr().out
    assert main(["index", "info", str(clip_ft_index)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "clip_ft" and info["capabilities"]["rerank"] is False
    text = next(iter(gallery["captions"].values()))[0]
    assert main(["search", str(clip_ft_index), text, "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["match_probability"] is None for h in hits)
    assert main(["search", str(clip_ft_index), text, "--rerank", "2"]) == 2
    assert "declares" in capsys.readouterr().err
    client = TestClient(create_app(clip_ft_searcher))
    page_info = client.get("/info").json()
    assert page_info["method"] == "clip_ft" and not page_info["rerank"] and not page_info["explain"]
    assert client.post("/search", json={"text": text, "k": 2}).json()["hits"][0]["rank"] == 1
    assert client.post("/explain", json={"text": text, "id": hits[0]["id"]}).status_code == 400
    assert main(["export", str(clip_ft_run), "--onnx", str(tmp_path / "onnx")]) == 0
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["method"] == "clip_ft"
