"""`tbps search --html OUT`: a self-contained results page (thumbnails embedded as data URIs)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from ..data.transforms import load_image
from ..utils import atomic_write_text
from .searcher import SearchResults


def thumbnail_data_uri(path: str | Path, max_height: int = 256, max_width: int = 256) -> str | None:
    """A JPEG thumbnail as a data URI, or None when the file cannot be read any more."""
    try:
        img = load_image(path)
    except OSError:  # a vanished or undecodable file shows as "missing"
        return None
    img.thumbnail((max_width, max_height), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render_results_html(res: SearchResults, title: str = "tbps search") -> str:
    cards = []
    for h in res.hits:
        uri = thumbnail_data_uri(h.path)
        img = (f'<img src="{uri}" alt="{html.escape(Path(h.path).name)}">' if uri
               else '<div class="missing">image missing</div>')
        extra = []
        if h.match_probability is not None:
            extra.append(f"p(match) {_fmt(h.match_probability)}")
        if h.image_uncertainty is not None:
            extra.append(f"uncert. {_fmt(h.image_uncertainty, 4)}")
        if h.reranked:
            extra.append(f"cos {_fmt(h.cosine)}")
        # outside the re-ranked top K the model's score is cosine - 100: show the cosine instead
        score = f"cos {_fmt(h.cosine)} (not re-ranked)" if res.rerank and not h.reranked else f"score {_fmt(h.score)}"
        cards.append(
            f'<figure class="hit" data-id="{h.id}" data-rank="{h.rank}">{img}'
            f'<figcaption><b>#{h.rank}</b> {score}<br>{html.escape(" · ".join(extra))}'
            f'<br><span class="path" title="{html.escape(h.path)}">{html.escape(Path(h.path).name)}</span>'
            "</figcaption></figure>")
    meta = [f"method {html.escape(res.method)}", f"top {len(res.hits)}"]
    if res.rerank:
        meta.append(f"re-ranked top {res.rerank}")
    if res.query_uncertainty is not None:
        meta.append(f"query uncertainty {_fmt(res.query_uncertainty, 4)}")
    return ("<!doctype html><html lang=en><meta charset=utf-8>"
            f"<title>{html.escape(title)}: {html.escape(res.query)}</title>"
            "<style>body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}"
            ".grid{display:flex;flex-wrap:wrap;gap:12px}.hit{margin:0;width:150px;font-size:12px}"
            ".hit img{max-width:150px;max-height:256px;display:block;border:1px solid #ccc}"
            ".path{color:#666;word-break:break-all}.missing{height:120px;background:#eee;display:flex;"
            "align-items:center;justify-content:center}</style>"
            f"<h1>{html.escape(res.query)}</h1><p>{' · '.join(meta)}</p>"
            f'<div class="grid">{"".join(cards)}</div></html>\n')


def write_results_html(res: SearchResults, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_results_html(res))
    return out
