"""`tbps serve`: the search service (FastAPI) and its single web page.

Endpoints (OpenAPI docs at /docs, schema at /openapi.json):

    GET  /               the search page (query box, result grid, heat maps)
    GET  /healthz        liveness + index size
    GET  /info           model, index and the method's declared capabilities (re-ranking, uncertainty,
                         heat maps), limits
    POST /search         {"text": str, "k": int, "rerank": int} -> ranked hits with scores
    POST /explain        {"text": str, "id": int} -> per-word association maps (methods that declare them)
    GET  /images/{id}    the indexed image file with that id (only indexed files are served)

Requests are bounded: the body size (`max_body_bytes`), the query length (`max_text_chars`),
`k` (`max_k`) and `rerank` (`max_rerank`); a request outside the bounds gets a 4xx whose message
names the field and the value.
"""
# no `from __future__ import annotations`: FastAPI must resolve the request models defined in create_app

import ipaddress
import mimetypes
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from .searcher import Searcher

WEB_DIR = Path(__file__).parent / "web"
MAX_BODY_BYTES = 16 * 1024
MAX_TEXT_CHARS = 1000
MAX_K = 100
MAX_RERANK = 100


class _BodyTooLarge(HTTPException):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (413), declared or streamed."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0 or size > self.max_bytes:
                msg = (f"request body of {declared.decode(errors='replace')} bytes exceeds the limit of "
                       f"{self.max_bytes} bytes" if size > 0 else f"invalid Content-Length {declared!r}")
                await JSONResponse({"detail": msg}, status_code=413 if size > 0 else 400)(scope, receive, send)
                return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(413, f"request body exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(index: str | Path | Searcher, *, model: str | Path | None = None, device: str | None = None,
               max_k: int = MAX_K, max_rerank: int = MAX_RERANK, max_text_chars: int = MAX_TEXT_CHARS,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app for an index folder (or an already loaded `Searcher`)."""
    searcher = index if isinstance(index, Searcher) else Searcher(index, model=model, device=device)
    info = searcher.info()
    if searcher.max_rerank is not None:  # the method's own limit, if tighter than the service's
        max_rerank = min(max_rerank, int(searcher.max_rerank))

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(..., min_length=1, max_length=max_text_chars, description="the description to search for")
        k: int = Field(10, ge=1, le=max_k, description="number of results")
        rerank: int = Field(0, ge=0, le=max_rerank,
                            description="re-rank the top K with the method's second stage, where its capabilities "
                                        "declare one (0 = off)")

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str = Field(..., min_length=1, max_length=max_text_chars)
        id: int = Field(..., ge=0, description="the image id from a search result")
        layers: str = Field("all", pattern=r"^(all|last|-?\d+)$", description="cross-attention layers to average")

    app = FastAPI(title="tbps search", version="1",
                  description=f"Text-based person search over {info['images']} images ({info['method']} model).")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.searcher = searcher

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((WEB_DIR / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "images": len(searcher), "method": searcher.method_name}

    @app.get("/info")
    def get_info() -> dict[str, Any]:
        return {**info, "limits": {"max_k": max_k, "max_rerank": max_rerank, "max_text_chars": max_text_chars,
                                   "max_body_bytes": max_body_bytes}}

    @app.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        if not req.text.strip():
            raise HTTPException(422, "text: the query is blank")
        if req.rerank and not searcher.supports_rerank:
            raise HTTPException(422, f"rerank={req.rerank}: this index's {searcher.method_name} model declares "
                                     "no re-ranking")
        res = searcher.search(req.text, k=req.k, rerank=req.rerank or None)
        out = res.to_dict()
        for h in out["hits"]:
            h["image_url"] = f"/images/{h['id']}"
            h["name"] = Path(h.pop("path")).name  # no server paths to the client
        return out

    @app.post("/explain")
    def explain(req: ExplainRequest) -> dict[str, Any]:
        if not searcher.supports_explain:
            raise HTTPException(400, f"heat maps need a method that declares association maps; this index's "
                                     f"{searcher.method_name} model does not")
        if searcher.item(req.id) is None:
            raise HTTPException(404, f"id: no image with id {req.id} in the index")
        layers: str | int = int(req.layers) if req.layers.lstrip("-").isdigit() else req.layers
        try:
            return searcher.explain(req.text, req.id, layers)
        except (IndexError, ValueError) as err:
            raise HTTPException(422, f"layers={req.layers!r}: {err}") from err
        except OSError as err:
            raise HTTPException(404, f"id: image {req.id} cannot be read any more: {err}") from err

    @app.get("/images/{image_id}")
    def image(image_id: int = PathParam(..., ge=0, description="an id from a search result")) -> FileResponse:
        item = searcher.item(image_id)
        if item is None:
            raise HTTPException(404, f"no image with id {image_id} in the index")
        path = Path(item["path"])
        if not path.is_file():
            raise HTTPException(404, f"image {image_id} ({path.name}) is no longer on disk")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, model: str | Path | None = None,
          device: str | None = None, log_level: str = "info", **limits: Any) -> None:
    import uvicorn

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"tbps serve: warning: listening on {host}, reachable from other machines; the service has no "
              "authentication", file=sys.stderr)
    app = create_app(index_dir, model=model, device=device, **limits)
    print(f"tbps serve: {app.state.searcher.info()['images']} images; open http://{host}:{port}/ "
          f"(API docs at /docs)", file=sys.stderr)
    # keep-alive 30 s (uvicorn: 5 s): a client starved of CPU between two requests on a loaded
    # machine otherwise finds its connection closed (seen once in 2,877 requests of serve_load.py)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)
