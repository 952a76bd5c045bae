"""The search service: API tests with FastAPI's test client, and the page driven by a real browser
(Debian's chromium through Playwright; `make test` installs chromium when it is missing)."""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from search_fixtures import (backend, cada_index, cada_run, cada_searcher, gallery, tiny_benchmark,  # noqa: F401
                             uca_index, uca_run, uca_searcher)
from tbps.retrieval.serve import create_app

CHROMIUM = os.environ.get("TBPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def client(cada_searcher):
    return TestClient(create_app(cada_searcher, max_k=20, max_body_bytes=4096))


@pytest.fixture(scope="module")
def uca_client(uca_searcher):
    return TestClient(create_app(uca_searcher))


def _caption(gallery, n=0):
    return list(gallery["captions"].values())[n][0]


def test_health_info_docs_and_page(client, cada_searcher):
    assert client.get("/healthz").json() == {"status": "ok", "images": len(cada_searcher), "method": "cada"}
    info = client.get("/info").json()
    assert info["rerank"] and info["explain"] and not info["uncertainty"] and info["limits"]["max_k"] == 20
    schema = client.get("/openapi.json").json()
    assert {"/search", "/explain", "/images/{image_id}", "/healthz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    assert "drawHeat" in client.get("/static/app.js").text


def test_search_returns_the_searchers_ranking(client, cada_searcher, gallery):
    text = _caption(gallery)
    r = client.post("/search", json={"text": text, "k": 5, "rerank": 4})
    assert r.status_code == 200
    body = r.json()
    expected = cada_searcher.search(text, k=5, rerank=4)
    assert [h["id"] for h in body["hits"]] == [h.id for h in expected]
    assert [h["score"] for h in body["hits"]] == pytest.approx([h.score for h in expected], abs=1e-5)
    hit = body["hits"][0]
    assert hit["image_url"] == f"/images/{hit['id']}" and "path" not in hit  # no server paths leak
    assert 0 <= hit["match_probability"] <= 1


def test_bad_requests_get_4xx_naming_the_problem(client):
    def detail(r):
        return str(r.json()["detail"])

    r = client.post("/search", json={"text": "a man", "k": 21})
    assert r.status_code == 422 and "'k'" in detail(r) and "21" in detail(r) and "less than or equal to 20" in detail(r)
    r = client.post("/search", json={"text": "", "k": 3})
    assert r.status_code == 422 and "'text'" in detail(r)
    r = client.post("/search", json={"text": "   "})
    assert r.status_code == 422 and "blank" in detail(r)
    r = client.post("/search", json={"text": "a man", "k": "ten"})
    assert r.status_code == 422 and "'k'" in detail(r)
    r = client.post("/search", json={"text": "a man", "colour": "red"})
    assert r.status_code == 422 and "colour" in detail(r)
    r = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/search", json={"text": "x" * 5000})
    assert r.status_code == 413 and "4096" in detail(r)

    def chunked():
        yield b'{"text": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = client.post("/search", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit of 4096 bytes" in detail(r)


def test_images_serves_only_indexed_files(client, cada_searcher):
    hit = cada_searcher.search("a woman", k=1)[0]
    r = client.get(f"/images/{hit.id}")
    assert r.status_code == 200 and r.content == Path(hit.path).read_bytes()
    assert r.headers["content-type"].startswith("image/")
    assert client.get("/images/999999").status_code == 404
    assert "999999" in client.get("/images/999999").json()["detail"]
    assert client.get("/images/-1").status_code == 422
    for probe in ("/images/..%2F..%2Fetc%2Fpasswd", "/images/../../etc/passwd", "/images/%2Fetc%2Fpasswd",
                  "/images/1.png"):
        r = client.get(probe)
        assert r.status_code in (404, 422) and b"root:" not in r.content


def test_explain_returns_word_maps_for_cada_and_a_clear_400_otherwise(client, uca_client, cada_searcher, gallery):
    text = _caption(gallery)
    hit = cada_searcher.search(text, k=1)[0]
    r = client.post("/explain", json={"text": text, "id": hit.id})
    assert r.status_code == 200
    body = r.json()
    rows, cols = body["grid"]
    kinds = {m["kind"] for m in body["maps"]}
    assert {"caption", "word"} <= kinds
    for m in body["maps"]:
        assert len(m["weights"]) == rows and len(m["weights"][0]) == cols
        assert sum(map(sum, m["weights"])) == pytest.approx(1.0, abs=1e-3)
    assert client.post("/explain", json={"text": text, "id": 424242}).status_code == 404
    r = uca_client.post("/explain", json={"text": text, "id": 0})
    assert r.status_code == 400 and "declares association maps" in r.json()["detail"]
    r = uca_client.post("/search", json={"text": text, "rerank": 5})
    assert r.status_code == 422 and "rerank=5" in r.json()["detail"]
    r = uca_client.post("/search", json={"text": text, "k": 3}).json()
    assert r["query_uncertainty"] > 0 and all(0 <= h["match_probability"] <= 1 for h in r["hits"])


# ----------------------------------------------------------------------------- the page in a browser

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(cada_searcher):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cada_searcher), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_browser_shows_the_expected_image_first_and_its_heat_map(live_server, cada_searcher, gallery):
    assert os.access(CHROMIUM, os.X_OK), (
        f"the browser test needs Debian's chromium at {CHROMIUM}: run `make test` (installs it) or "
        "`apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    text = _caption(gallery, 3)
    expected = cada_searcher.search(text, k=10)  # the page must agree with the Python API
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=15_000)
            assert "cada model" in page.text_content("#about")
            page.fill("#rerank", "0")
            page.fill("#query", text)
            page.click("#search-btn")
            page.wait_for_selector(".result", timeout=15_000)
            cards = page.query_selector_all(".result")
            assert len(cards) == 10
            first = cards[0]
            assert first.get_attribute("data-rank") == "1"
            assert int(first.get_attribute("data-id")) == expected[0].id
            assert first.get_attribute("title") == Path(expected[0].path).name
            assert [int(c.get_attribute("data-id")) for c in cards] == [h.id for h in expected]
            assert f"{expected[0].score:.3f}" in first.inner_text()
            page.wait_for_function("document.querySelector('.result img').naturalWidth > 0", timeout=10_000)

            first.click()
            page.wait_for_selector("#heat[data-drawn='1']", timeout=20_000)
            words = page.query_selector_all("#words .word")
            assert len(words) > 3 and words[0].inner_text() == "whole caption"
            words[2].click()
            assert page.get_attribute("#heat", "data-label") == words[2].inner_text()
            # the overlay has colour (the map was drawn, not a blank canvas)
            painted = page.evaluate("""() => { const c = document.querySelector('#heat');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n / (d.length / 4); }""")
            assert painted > 0.9

            page.fill("#query", "a person")
            page.select_option("#k", "50")
            page.click("#search-btn")
            page.wait_for_function("document.querySelectorAll('.result').length === "
                                   f"{min(50, len(cada_searcher))}", timeout=15_000)
            assert not errors, errors
        finally:
            browser.close()
