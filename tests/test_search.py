"""Search product: index build / add / remove, FAISS, the Searcher API, the CLI, ONNX export."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from search_fixtures import (_index_once, backend, cada_index, cada_run, cada_searcher,  # noqa: F401
                             clip_ft_index, clip_ft_run, clip_ft_searcher, gallery, irra_index, irra_run, irra_searcher, stored_features,
                             tiny_benchmark, uca_index, uca_run, uca_searcher)
from tbps.cli import main
from tbps.data.loader import ImageList
from tbps.engine.runs import load_run
from tbps.retrieval import faiss_index as fx
from tbps.retrieval.index import (ModelMismatchError, add_to_index, build_index, read_manifest,
                                  remove_from_index)
from tbps.retrieval.searcher import Searcher

QUIET = {"progress": False, "log": lambda *a: None}


def _captions(gallery, n=3):
    return [caps[0] for caps in list(gallery["captions"].values())[:n]]


def _copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- build

def test_build_indexes_every_readable_image_and_lists_the_rest(cada_index, cada_run, gallery, backend):
    m = read_manifest(cada_index)
    readable = sorted(gallery["captions"])
    assert m["count"] == len(readable) and m["model"]["method"] == "cada"
    assert sorted(s["path"] for s in m["skipped"]) == gallery["unreadable"]
    assert all(s["path"] in s["error"] for s in m["skipped"])  # the reason names the file
    assert {"emb", "tokens"} <= set(m["features"])  # cada stores what re-ranking reads
    if backend == "faiss":
        assert m["faiss"]["kind"] == "flat" and m["faiss"]["recall_at_10"] == 1.0
    else:  # Milvus Lite in the folder, by name; per-image extras small enough for a field are fields
        assert "faiss" not in m and m["backend"] == "milvus"
        mv = m["milvus"]
        tokens = int(np.prod(m["features"]["tokens"]["shape"]))  # (1+P) x W of the tiny model: fits
        assert (mv["uri"], mv["lite"], mv["collection"], mv["extras"]) == ("milvus.db", True, "tbps_index",
                                                                          {"tokens": tokens})
        assert mv["count"] == m["count"] and mv["index"]["index_type"] == "FLAT" and mv["dim"] == m["dim"]
    assert not (cada_index / ".build").exists()
    assert len(m["model"]["weights_sha256"]) == 64 and m["model"]["checkpoint"].endswith("best")

    ids, items, feats = stored_features(cada_index)
    assert [it["path"] for it in items] == readable and ids == list(range(len(readable)))
    for it in items:  # file metadata as on disk
        st = os.stat(it["path"])
        assert (it["size"], it["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    run = load_run(cada_run, device="cpu")
    images = torch.stack([ImageList(readable, run.test_transform())[i] for i in range(len(readable))])
    ref = run.method.encode_images(images)
    assert torch.allclose(feats["emb"], ref["emb"], atol=1e-5)
    assert feats["tokens"].dtype == torch.float16 and feats["tokens"].shape == ref["tokens"].shape


def test_a_killed_build_resumes_from_its_last_batch(tmp_path, cada_run, cada_index, gallery):
    run = load_run(cada_run, device="cpu")
    real = run.method.encode_images
    calls = {"n": 0}

    def dies_on_third_batch(images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if killed mid-build
        return real(images)

    out = tmp_path / "index"
    run.method.encode_images = dies_on_third_batch
    with pytest.raises(KeyboardInterrupt):
        build_index(gallery["dir"], run, out, batch_size=8, **QUIET)
    assert not (out / "manifest.json").exists()
    assert sorted(p.name for p in (out / ".build").glob("part-*")) == ["part-000000.safetensors",
                                                                        "part-000001.safetensors"]
    with pytest.raises(FileNotFoundError, match="interrupted"):
        Searcher(out)

    calls["n"] = 0
    run.method.encode_images = lambda images: (calls.__setitem__("n", calls["n"] + 1), real(images))[1]
    n_batches = -(-(len(gallery["captions"]) + len(gallery["unreadable"])) // 8)
    build_index(gallery["dir"], run, out, batch_size=8, **QUIET)
    assert calls["n"] == n_batches - 2  # only the batches that were not written before the kill
    _, items, feats = stored_features(out)
    _, ref_items, ref = stored_features(cada_index)
    assert items == ref_items and torch.allclose(feats["emb"], ref["emb"], atol=1e-6)
    assert len(read_manifest(out)["skipped"]) == 2


def test_build_refuses_to_overwrite_or_to_read_a_missing_gallery(tmp_path, cada_index, cada_run, uca_run, gallery):
    with pytest.raises(FileExistsError, match="already holds an index"):
        build_index(gallery["dir"], cada_run, cada_index, **QUIET)
    with pytest.raises(ModelMismatchError, match="different"):
        build_index(gallery["dir"], uca_run, cada_index, **QUIET)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        build_index(tmp_path / "no-such-folder", cada_run, tmp_path / "x", **QUIET)


# ----------------------------------------------------------------------------- search = brute force

@pytest.mark.parametrize("which", ["irra", "cada", "uca", "clip_ft"])
def test_search_ranks_like_the_methods_own_scores(which, request, gallery, backend):
    """Every method, through the one shared path (`Method.rank` on the candidates; cada and uca on
    both backends)."""
    searcher, index = request.getfixturevalue(f"{which}_searcher"), request.getfixturevalue(f"{which}_index")
    assert searcher.method.name == which == read_manifest(index)["model"]["method"]
    ids, items, feats = stored_features(index)
    for text in _captions(gallery):
        res = searcher.search(text, k=10)
        sim = searcher.method.score(searcher.encode_text(text), feats)["t2i"][0]
        top = torch.topk(sim, 10)
        assert [h.id for h in res] == [ids[i] for i in top.indices.tolist()]
        assert np.allclose([h.score for h in res], top.values.numpy(), atol=1e-5)
        assert [h.rank for h in res] == list(range(1, 11))
        assert res[0].path == items[int(top.indices[0])]["path"]
    # the Searcher of a caption's own image: k larger than the gallery returns it all
    assert len(searcher.search("a person", k=1000)) == len(ids)


def test_cada_rerank_matches_method_score_with_rerank_k(cada_searcher, cada_index, gallery):
    ids, _, feats = stored_features(cada_index)
    K, k = 6, 9  # k > K: the tail keeps cosine - 100, as in method.score
    for text in _captions(gallery, 2):
        res = cada_searcher.search(text, k=k, rerank=K)
        sim = cada_searcher.method.score(cada_searcher.encode_text(text), feats, rerank_k=K)[f"t2i-rerank@{K}"][0]
        top = torch.topk(sim, k)
        assert [h.id for h in res] == [ids[i] for i in top.indices.tolist()]
        assert np.allclose([h.score for h in res], top.values.numpy(), atol=1e-4)
        assert [h.reranked for h in res] == [True] * K + [False] * (k - K)
        assert all(0.0 <= h.match_probability <= 1.0 for h in res[:K])
        assert all(h.match_probability is None for h in res[K:])
    with pytest.raises(ValueError, match="rerank"):
        cada_searcher.search("a man", k=3, rerank=-1)


def test_uca_reports_match_probability_and_query_uncertainty(uca_searcher, uca_index, gallery):
    from tbps.methods.distributions import paired_distance, uncertainty

    ids, _, feats = stored_features(uca_index)
    text = _captions(gallery, 1)[0]
    res = uca_searcher.search(text, k=5)
    m, tf = uca_searcher.method, uca_searcher.encode_text(text)
    assert res.query_uncertainty == pytest.approx(float(uncertainty(tf["logvar"])[0]), rel=1e-5)
    rows = [ids.index(h.id) for h in res]
    d = paired_distance(m.cfg["distance"], tf["emb"].expand(5, -1), tf["logvar"].expand(5, -1),
                        feats["emb"][rows], feats["logvar"][rows])
    assert np.allclose([h.match_probability for h in res], m.match_probability(d).numpy(), atol=1e-6)
    assert np.allclose([h.image_uncertainty for h in res], uncertainty(feats["logvar"][rows]).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="re-ranking needs a method that declares it"):
        uca_searcher.search(text, k=3, rerank=4)


@pytest.mark.parametrize("score", ["w2", "csd"])
def test_uca_ranking_by_distribution_distance_is_exact(score, uca_searcher, uca_index, gallery, monkeypatch):
    ids, _, feats = stored_features(uca_index)
    monkeypatch.setitem(uca_searcher.method.cfg, "score", score)
    text = _captions(gallery, 2)[1]
    res = uca_searcher.search(text, k=8)
    sim = uca_searcher.method.score(uca_searcher.encode_text(text), feats)["t2i"][0]
    top = torch.topk(sim, 8)
    assert [h.id for h in res] == [ids[i] for i in top.indices.tolist()]
    assert np.allclose([h.score for h in res], top.values.numpy(), atol=1e-5)


def test_searcher_is_the_package_level_api_and_validates_input(cada_index, cada_searcher):
    import tbps

    assert tbps.Searcher is Searcher
    for args, field in ((("", 5), "text"), (("   ", 5), "text"), (("a man", 0), "k"), (("a man", 2.5), "k")):
        with pytest.raises(ValueError, match=f"^{field}: .*{args[1] if field == 'k' else ''}"):
            cada_searcher.search(*args)
    d = cada_searcher.search("a man in a red coat", k=2).to_dict()
    assert json.loads(json.dumps(d))["hits"][0]["rank"] == 1


# ----------------------------------------------------------------------------- add / remove / identity

def _milvus_ids(index: Path) -> list[int]:
    from tbps.retrieval.vectors import open_vectors

    v = open_vectors(index, read_manifest(index))
    try:
        return v.store.ids().tolist()
    finally:
        v.close()


def test_add_and_remove_keep_ids_stable_and_writes_atomic(tmp_path, cada_index, gallery, monkeypatch, backend):
    index = _copy_index(cada_index, tmp_path / "index")
    before = read_manifest(index)
    src = sorted(gallery["captions"])[0]
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(src, extra / "copy_a.png")
    shutil.copy(src, extra / "copy_b.png")
    (extra / "bad.webp").write_bytes(b"RIFF0000WEBPnope")

    r = add_to_index(index, [extra], **QUIET)
    assert (r["added"], r["images"]) == (2, before["count"] + 2) and len(r["skipped_now"]) == 1
    m = read_manifest(index)
    assert m["next_id"] == before["next_id"] + 2 and m["generation"] == before["generation"] + 1
    assert any(s["path"].endswith("bad.webp") for s in m["skipped"])
    s = Searcher(index)
    hits = s.search("anything", k=len(s))
    new_ids = {h.id: h.path for h in hits if h.path.startswith(str(extra.resolve()))}
    assert sorted(new_ids) == [before["next_id"], before["next_id"] + 1]
    # a copy of an image scores exactly like the original
    same = {h.path: h.score for h in hits}
    assert same[str((extra / "copy_a.png").resolve())] == pytest.approx(same[src], abs=1e-6)

    assert add_to_index(index, [extra / "copy_a.png"], **QUIET)["unchanged"] == [str((extra / "copy_a.png").resolve())]
    os.utime(extra / "copy_a.png", ns=(1, 1))  # changed file -> re-encoded under a new id
    r = add_to_index(index, [extra / "copy_a.png"], **QUIET)
    assert r["replaced"] == 1 and r["images"] == before["count"] + 2

    # a write that dies before the manifest is swapped leaves the previous index intact
    import tbps.retrieval.index as ix

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(ix, "atomic_write_json", boom)
    with pytest.raises(RuntimeError):
        remove_from_index(index, [extra])
    monkeypatch.undo()
    assert read_manifest(index)["count"] == before["count"] + 2
    assert len(Searcher(index)) == before["count"] + 2

    r = remove_from_index(index, [extra, tmp_path / "never-indexed.png"])
    assert (r["removed"], r["images"]) == (2, before["count"]) and r["not_found"] == [str(tmp_path / "never-indexed.png")]
    m = read_manifest(index)
    named = {sh["file"] for sh in m["shards"]} | ({m["faiss"]["file"]} if backend == "faiss" else set())
    on_disk = {p.relative_to(index).as_posix() for p in index.rglob("*") if p.is_file() and p.name != ".lock"}
    on_disk = {f for f in on_disk if not f.startswith("milvus.db")}  # Milvus Lite's own folder
    assert on_disk == named | {"manifest.json"}  # orphans of the failed write were collected
    if backend == "milvus":  # the collection holds exactly the manifest's rows: nothing orphaned
        assert _milvus_ids(index) == stored_features(index)[0] and m["milvus"]["count"] == m["count"]

    victim = tmp_path / "victim.png"
    shutil.copy(src, victim)
    add_to_index(index, [victim], **QUIET)
    victim.unlink()
    assert remove_from_index(index, missing=True)["removed"] == 1
    if backend == "milvus":
        assert _milvus_ids(index) == stored_features(index)[0]


def test_a_different_model_is_refused_with_a_clear_message(tmp_path, cada_index, cada_run, uca_run):
    index = _copy_index(cada_index, tmp_path / "index")
    with pytest.raises(ModelMismatchError) as err:
        add_to_index(index, [tmp_path], model=uca_run, **QUIET)
    msg = str(err.value)
    assert str(index) in msg and "cada" in msg and "uca" in msg and "tbps index build" in msg
    with pytest.raises(ModelMismatchError):
        Searcher(index, model=uca_run)
    # same run folder, retrained weights: refused as different weights
    moved = tmp_path / "run-copy"
    shutil.copytree(cada_run, moved)
    from safetensors.torch import load_file, save_file

    w = moved / "checkpoints" / "best" / "model.safetensors"
    state = load_file(str(w))
    key = next(iter(state))
    state[key] = state[key] + 0.01
    save_file(state, str(w))
    with pytest.raises(ModelMismatchError, match="different weights"):
        Searcher(index, model=moved)
    # an exact copy in a new place is the same model
    shutil.copytree(cada_run, tmp_path / "run-same")
    assert len(Searcher(index, model=tmp_path / "run-same")) == read_manifest(index)["count"]


# ----------------------------------------------------------------------------- backends, multi-process build

def test_milvus_index_returns_the_faiss_top10_and_keeps_no_secret(tmp_path, tmp_path_factory, gallery, cada_run,
                                                                  capsys, monkeypatch):
    """The same gallery and model behind FAISS and behind Milvus Lite (built by the CLI, with a token
    in the environment that must not reach the folder) give the same top-10."""
    faiss_dir = _index_once("cada-index", tmp_path_factory, gallery["dir"], cada_run, 8, "faiss")
    out = tmp_path / "milvus-index"
    monkeypatch.setenv("TBPS_MILVUS_TOKEN", "root:s3cret-token")
    assert main(["index", "build", str(gallery["dir"]), "--model", str(cada_run), "--out", str(out), "--quiet",
                 "--backend", "milvus", "--collection", "city_cams"]) == 0
    capsys.readouterr()
    text = (out / "manifest.json").read_text()
    assert "s3cret" not in text and json.loads(text)["milvus"]["collection"] == "city_cams"
    assert main(["index", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "milvus" and info["milvus"]["uri"] == "milvus.db"
    a, b = Searcher(faiss_dir), Searcher(out)
    for cap in _captions(gallery, 5):
        ha, hb = a.search(cap, k=10), b.search(cap, k=10)
        assert [h.id for h in ha] == [h.id for h in hb] and [h.path for h in ha] == [h.path for h in hb]
        assert [h.score for h in ha] == pytest.approx([h.score for h in hb], abs=1e-5)
    assert b.info()["backend"] == "milvus"
    capsys.readouterr()
    assert main(["index", "build", str(gallery["dir"]), "--model", str(cada_run), "--out", str(tmp_path / "x"),
                 "--milvus-uri", "http://localhost:19530"]) != 0
    assert "need --backend milvus" in capsys.readouterr().err


def test_two_process_build_equals_one_process(tmp_path, tmp_path_factory, gallery, cada_run):
    """`tbps index build --nproc 2` (torchrun, 2 gloo processes on the CPU, each encoding every
    other batch) writes the same rows as one process."""
    one = _index_once("cada-index", tmp_path_factory, gallery["dir"], cada_run, 8, "faiss")
    out = tmp_path / "two"
    assert main(["index", "build", str(gallery["dir"]), "--model", str(cada_run), "--out", str(out),
                 "--batch-size", "8", "--nproc", "2", "--quiet"]) == 0
    m1, m2 = read_manifest(one), read_manifest(out)
    assert m2["history"][-1]["processes"] == 2 and m2["count"] == m1["count"]
    assert sorted(s["path"] for s in m2["skipped"]) == sorted(s["path"] for s in m1["skipped"])
    ids1, items1, f1 = stored_features(one)
    ids2, items2, f2 = stored_features(out)
    assert ids1 == ids2 and [it["path"] for it in items1] == [it["path"] for it in items2]
    assert set(f1) == set(f2)
    for k in f1:
        assert torch.allclose(f1[k].float(), f2[k].float(), atol=1e-4), k
    cap = _captions(gallery, 1)[0]
    assert [h.id for h in Searcher(out).search(cap, k=10)] == [h.id for h in Searcher(one).search(cap, k=10)]


# ----------------------------------------------------------------------------- faiss

def _clustered(n, d=32, clusters=50, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["ivf", "ivf_pca", "hnsw"])
def test_approximate_index_measures_and_reaches_its_recall(kind):
    emb = _clustered(4000)
    ids = np.arange(10, 4010)
    index, info = fx.build(emb, ids, kind=kind, recall_target=0.95)
    assert info["kind"] == kind and info["recall_at_10"] >= 0.95 and info["recall_queries"] == 500
    assert info["recall_source"] == "gallery+noise" and "optimistic" in info["recall_note"]
    breadth = "efSearch" if kind == "hnsw" else "nprobe"
    assert info[breadth] in [int(v) for v in info[f"recall_by_{breadth}"]]
    q = fx.recall_queries(emb, 100, seed=5)
    assert fx.recall_at_k(fx.search(index, q, 10)[1], fx.exact_topk(emb, ids, q, 10)) >= 0.9
    # the stored bytes reload with the tuned breadth
    again = fx.from_bytes(fx.to_bytes(index), info)
    assert (fx.search(again, q, 10)[1] == fx.search(index, q, 10)[1]).all()
    assert fx.remove(index, info, np.array([10, 11])) == (kind == "ivf")


def _lowrank(n, seed, latent=8, d=64, clusters=40, spread=0.5):
    """Points (or, with a larger spread, queries) around shared centres in a low-dimensional subspace."""
    rng = np.random.default_rng(0)
    centres, proj = rng.standard_normal((clusters, latent)), rng.standard_normal((latent, d))
    rng = np.random.default_rng(seed)
    x = (centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, latent))) @ proj
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_pca_projects_to_the_data_rank_and_returns_exact_scores():
    emb, ids = _lowrank(6000, 1), np.arange(6000)
    index, info = fx.build(emb, ids, kind="ivf_pca", recall_target=0.95)
    assert info["pca_dim"] == 8 and info["k_factor"] == fx.REFINE_K_FACTOR  # 8 latent dims of 64
    q = _lowrank(50, 2, spread=0.75)
    scores, found = fx.search(index, q, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ emb.T, found, axis=1), atol=1e-5)  # re-ranked exactly


def test_recall_on_query_like_vectors_is_what_searches_then_get():
    """Stored recall from query-like vectors (held-out draws, as text embeddings of captions would
    be) matches recall measured on fresh queries; noisy gallery points would overstate it."""
    emb, ids = _lowrank(8000, 1), np.arange(8000)
    calib, fresh = _lowrank(500, 2, spread=0.75), _lowrank(500, 3, spread=0.75)
    truth = fx.exact_topk(emb, ids, fresh, 10)
    for target in (0.9, 0.98):
        index, info = fx.build(emb, ids, kind="ivf_pca", recall_target=target, queries=calib)
        assert info["recall_source"] == "queries" and "captions" in info["recall_note"]
        assert info["recall_at_10"] >= target and info["recall_queries"] == 500
        measured = fx.recall_at_k(fx.search(index, fresh, 10)[1], truth)
        assert abs(measured - info["recall_at_10"]) <= 0.02, (target, measured, info["recall_by_nprobe"])
        # the breadth is the smallest tried one that met the target
        met = [int(v) for v, r in info["recall_by_nprobe"].items() if r >= target]
        assert info["nprobe"] == min(met)
    with pytest.raises(ValueError, match="dim 3"):
        fx.build(emb, ids, kind="ivf", queries=np.ones((4, 3), np.float32))


def test_auto_kind_switches_to_ivf_pca_at_the_threshold_unless_exact_is_as_fast():
    assert fx.choose_kind(49_999) == "flat" and fx.choose_kind(50_000) == "ivf_pca"
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        fx.choose_kind(10, "annoy")
    _, info = fx.build(_clustered(4000), np.arange(4000), kind="auto", threshold=1000, recall_target=0.95)
    assert info["kind"] == "ivf_pca" and info["recall_at_10"] >= 0.95 and info["nprobe"] < info["nlist"] / 2
    # unstructured vectors: ivf would have to visit most cells, so auto keeps exact search
    noise = np.random.default_rng(1).standard_normal((2000, 32)).astype(np.float32)
    _, info = fx.build(noise / np.linalg.norm(noise, axis=1, keepdims=True), np.arange(2000), threshold=1000)
    assert info["kind"] == "flat" and "exact search instead" in info["fallback"]


def test_index_build_stores_the_measured_recall(tmp_path, cada_run, tiny_benchmark):
    out = tmp_path / "ivf"
    build_index(tiny_benchmark / "imgs", cada_run, out, kind="ivf", batch_size=80, **QUIET)  # 160 images
    f = read_manifest(out)["faiss"]
    assert f["kind"] == "ivf" and f["nlist"] == 4 and 0.0 < f["recall_at_10"] <= 1.0 and f["nprobe"] >= 1
    assert str(f["nprobe"]) in f["recall_by_nprobe"]
    # recall measured on the model's own text embeddings of the run's validation captions, kept for later writes
    from safetensors.numpy import load_file

    from tbps.retrieval.query_samples import embed_captions, run_captions

    assert f["recall_source"] == "queries" and "captions" in f["recall_note"]
    saved = load_file(str(out / "recall-queries.safetensors"))["queries"]
    run = load_run(cada_run, device="cpu")
    np.testing.assert_allclose(saved, embed_captions(run, run_captions(run)), atol=1e-5)
    assert f["recall_queries"] == len(saved) == 64  # the tiny benchmark's 64 validation captions
    assert len(Searcher(out).search("a woman", k=5)) == 5
    from tbps.retrieval.gallery import scan_images

    first = scan_images([tiny_benchmark / "imgs"])[0].path
    remove_from_index(out, [first], log=lambda *a: None)  # loads no model: re-tunes on the saved queries
    f = read_manifest(out)["faiss"]
    assert f["recall_source"] == "queries" and f["recall_queries"] == len(saved)
    # --recall-captions FILE: the user's own queries
    caps = tmp_path / "queries.txt"
    caps.write_text("a woman in a red coat\n\na man with a black backpack\na girl in a yellow dress\n")
    build_index(tiny_benchmark / "imgs", cada_run, out, kind="ivf", batch_size=80, overwrite=True,
                recall_captions=caps, **QUIET)
    f = read_manifest(out)["faiss"]
    assert f["recall_source"] == "queries" and f["recall_queries"] == 3


# ----------------------------------------------------------------------------- CLI

def test_cli_index_search_json_html_and_errors(tmp_path, cada_run, cada_index, uca_index, gallery, capsys):
    text = _captions(gallery, 1)[0]
    assert main(["search", str(cada_index), text, "-k", "3", "--rerank", "4", "--json",
                 "--html", str(tmp_path / "page.html")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 3 and out["rerank"] == 4 and out["hits"][0]["reranked"]
    page = (tmp_path / "page.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 3 and f'data-id="{out["hits"][0]["id"]}"' in page

    assert main(["search", str(uca_index), text, "-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "query uncertainty" in printed and "p(match)" in printed

    def fails(args, *needles):
        assert main(args) == 2
        err = capsys.readouterr().err
        for n in needles:
            assert n in err, err

    fails(["search", str(tmp_path / "nope"), "x"], str(tmp_path / "nope"))
    fails(["search", str(cada_index), "   "], "text")
    fails(["search", str(uca_index), "x", "--rerank", "3"], "rerank=3", "declares")
    fails(["index", "build", str(tmp_path / "missing"), "--model", str(cada_run), "--out", str(tmp_path / "o")],
          str(tmp_path / "missing"))
    fails(["index", "add", str(cada_index), str(tmp_path / "ghost.png")], str(tmp_path / "ghost.png"))
    with pytest.raises(SystemExit):
        main(["search", str(cada_index), "x", "-k", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err

    out_dir = tmp_path / "cli-index"
    assert main(["index", "build", str(gallery["dir"]), "--model", str(cada_run), "--out", str(out_dir),
                 "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == len(gallery["captions"])
    assert main(["index", "info", str(out_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["faiss"]["kind"] == "flat"
    # the method's declared capabilities, recorded with the model
    assert info["capabilities"]["rerank"] and info["capabilities"]["index_features"] == ["emb", "tokens"]


# ----------------------------------------------------------------------------- ONNX export

@pytest.mark.parametrize("which", ["cada", "uca"])
def test_onnx_export_matches_torch(which, tmp_path, cada_run, uca_run, capsys):
    import onnxruntime as ort

    from tbps.data.loader import tokens_to_dict

    run_dir = cada_run if which == "cada" else uca_run
    out = tmp_path / "onnx"
    assert main(["export", str(run_dir), "--onnx", str(out)]) == 0
    meta = json.loads((out / "export.json").read_text())
    assert {"image_encoder.onnx", "text_encoder.onnx", "export.json", "tokenizer"} <= {p.name for p in out.iterdir()}
    assert max(meta["check"]["image_encoder"].values()) < 1e-2  # includes cada's float16 tokens
    assert meta["check"]["image_encoder"]["emb"] < 1e-4 and meta["check"]["text_encoder"]["emb"] < 1e-4

    # independently: ONNX Runtime vs torch on new inputs (batch 4, another text length)
    run = load_run(run_dir, device="cpu")
    h, w = meta["preprocess"]["resize"]
    images = torch.rand(4, 3, h, w)
    sess = ort.InferenceSession(str(out / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images.numpy()})))
    ref = run.method.encode_images(images)
    assert np.abs(got["emb"] - ref["emb"].numpy()).max() < 1e-4
    if which == "uca":
        assert np.abs(got["logvar"] - ref["logvar"].numpy()).max() < 1e-3
    tb = tokens_to_dict(run.tokenizer.encode(["a short one", "a man with a green backpack and grey trousers walking",
                                              "woman", "red"], run.max_len))
    sess = ort.InferenceSession(str(out / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["emb"], {"ids": tb["ids"].numpy(), "attention_mask": tb["attention_mask"].numpy()})[0]
    ref = run.method.encode_texts({"ids": tb["ids"], "attention_mask": tb["attention_mask"]})["emb"]
    assert np.abs(got - ref.numpy()).max() < 1e-4


def test_a_single_threaded_search_leaves_the_process_thread_count_as_it_was():
    import faiss
    import numpy as np
    import torch

    from tbps.retrieval import faiss_index as fx

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)  # the OpenMP count torch reads too (set this way, not pinned by torch)
    try:
        index = faiss.IndexFlatIP(8)
        index.add(np.eye(8, dtype=np.float32))
        fx.search(index, np.eye(8, dtype=np.float32)[:1], 3, threads=1)
        assert faiss.omp_get_max_threads() == 2 and torch.get_num_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)
