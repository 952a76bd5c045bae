"""The Milvus vector store on embedded Milvus Lite: exact search, upsert/delete semantics, resume,
extras as fields, secrets kept out of what is recorded."""
from __future__ import annotations

import numpy as np
import pytest

from tbps.retrieval import faiss_index as fx
from tbps.retrieval.milvus_store import MilvusStore, MilvusStoreError, lite_uri, public_uri

DIM = 32


def _unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _files(ids) -> list[str]:
    return [f"cam{int(i) % 7}/img_{int(i):06d}.jpg" for i in ids]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """20k vectors inserted once (the slow part), shared by the read-only tests."""
    store = MilvusStore(lite_uri(tmp_path_factory.mktemp("milvus_big")), "big")
    emb, ids = _unit(20_000, 0), np.arange(20_000, dtype=np.int64) * 3 + 5  # ids need not be dense
    store.create(DIM)
    store.upsert(ids, emb, _files(ids))
    yield store, emb, ids
    store.close()


def test_20k_search_equals_brute_force_top10(big):
    store, emb, ids = big
    assert store.count() == 20_000
    queries = _unit(50, 1)
    scores, found = store.search(queries, 10)
    truth = fx.exact_topk(emb, ids, queries, 10)
    assert (found == truth).all()
    exact = np.sort(queries @ emb.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, exact, atol=1e-4)


def test_fetch_returns_rows_in_the_order_asked_and_names_missing_ids(big):
    store, emb, ids = big
    got = store.fetch(ids[[7, 3, 19_999]], ["emb", "file"])
    np.testing.assert_allclose(got["emb"], emb[[7, 3, 19_999]], atol=1e-6)
    assert got["file"] == _files(ids[[7, 3, 19_999]])
    with pytest.raises(KeyError, match="4"):
        store.fetch(np.array([4]))  # ids are 5, 8, 11, ...


def test_upsert_replaces_by_id_and_by_file_and_delete_leaves_nothing(tmp_path):
    store = MilvusStore(lite_uri(tmp_path), "semantics")
    store.create(DIM, extras={"logvar": DIM})
    emb, lv = _unit(100, 2), _unit(100, 3)
    ids = np.arange(100)
    store.upsert(ids, emb, _files(ids), {"logvar": lv})
    store.upsert(ids[:10], emb[:10], _files(ids[:10]), {"logvar": lv[:10]})  # the same rows again
    assert store.count() == 100
    # re-adding a file under a new id replaces its entry (no second row for the file)
    new = _unit(1, 4)
    store.upsert(np.array([500]), new, _files([3]), {"logvar": lv[:1]})
    assert store.count() == 100 and 3 not in store.ids() and 500 in store.ids()
    assert store.search(new, 1)[1][0, 0] == 500
    got = store.fetch(np.array([500, 4]), ["logvar", "file"])
    np.testing.assert_allclose(got["logvar"], np.stack([lv[0], lv[4]]), atol=1e-6)
    assert got["file"] == ["cam3/img_000003.jpg", "cam4/img_000004.jpg"]
    # delete: the row and its extras are gone, search never returns it
    store.delete(np.array([500, 4]))
    assert store.count() == 98 and not {4, 500} & set(store.ids().tolist())
    assert not {4, 500} & set(store.search(np.stack([new[0], emb[4]]), 98)[1].ravel().tolist())
    with pytest.raises(KeyError):
        store.fetch(np.array([500]), ["logvar"])
    # a path with quotes and backslashes is a plain key, not an expression
    odd = ['a"b\\c.jpg']
    store.upsert(np.array([900]), _unit(1, 5), odd, {"logvar": lv[:1]})
    store.upsert(np.array([901]), _unit(1, 6), odd, {"logvar": lv[:1]})
    assert 900 not in store.ids() and store.fetch(np.array([901]), ["file"])["file"] == odd
    store.close()


def test_resume_after_a_partial_insert(tmp_path):
    emb, ids = _unit(3000, 7), np.arange(3000)
    first = MilvusStore(lite_uri(tmp_path), "resume")
    first.create(DIM)
    first.upsert(ids[:1700], emb[:1700], _files(ids[:1700]), batch=500)  # then the writer "dies"
    first.close()
    again = MilvusStore(lite_uri(tmp_path), "resume")
    again.create(DIM)  # idempotent on the existing collection
    done = again.ids()
    assert (done == ids[:1700]).all()
    todo = np.setdiff1d(ids, done)
    start = todo[0] - 100  # resume with an overlap: rows written twice are not duplicated
    again.upsert(ids[start:], emb[start:], _files(ids[start:]), batch=500)
    assert again.count() == 3000 and (again.ids() == ids).all()
    q = _unit(20, 8)
    assert (again.search(q, 10)[1] == fx.exact_topk(emb, ids, q, 10)).all()
    again.close()


def test_schema_and_input_errors_name_the_problem(tmp_path):
    store = MilvusStore(lite_uri(tmp_path), "errors")
    store.create(DIM, extras={"logvar": DIM})
    with pytest.raises(MilvusStoreError, match="dim 32 with extras"):
        store.create(DIM + 1, extras={"logvar": DIM})
    with pytest.raises(MilvusStoreError, match="tokens.*side storage"):
        MilvusStore(lite_uri(tmp_path), "other").create(DIM, extras={"tokens": 33 * 256})
    with pytest.raises(MilvusStoreError, match="do not match"):
        store.upsert(np.arange(3), _unit(2, 0), _files(range(3)), {"logvar": _unit(3, 0)})
    with pytest.raises(MilvusStoreError, match="extras"):
        store.upsert(np.arange(2), _unit(2, 0), _files(range(2)))
    with pytest.raises(MilvusStoreError, match="collection name"):
        MilvusStore(lite_uri(tmp_path), "bad-name")
    store.close()


def test_describe_records_no_secret(tmp_path):
    store = MilvusStore(lite_uri(tmp_path), "described")
    store.create(DIM, extras={"logvar": DIM})
    d = store.describe()
    assert d["backend"] == "milvus" and d["lite"] and d["collection"] == "described"
    assert d["dim"] == DIM and d["extras"] == {"logvar": DIM} and d["index"]["metric_type"] == "IP"
    store.close()
    assert public_uri("https://root:s3cret@milvus.example:19530/db?token=abc") == "https://milvus.example:19530/db"
    assert public_uri("/data/index/milvus.db") == "/data/index/milvus.db"
