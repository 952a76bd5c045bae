"""A static HTML page of ranked results, with PNG thumbnails; correct identities framed in green."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .data.transforms import load_image
from .utils import atomic_write_text


@dataclass
class RankedQuery:
    caption: str
    pid: int
    results: list[tuple[str, int, float]]  # (image path, pid, score), best first


def write_results_page(out_dir: str | Path, queries: list[RankedQuery], title: str = "tbps results",
                       thumb_height: int = 128, subtitle: str = "") -> Path:
    """Write `out_dir/index.html` and `out_dir/thumbs/*.png`; returns the page path."""
    out_dir = Path(out_dir)
    thumbs = out_dir / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    def thumb(path: str) -> str:
        if path not in made:
            name = f"{len(made):05d}.png"
            im = load_image(path)
            w = max(1, round(im.width * thumb_height / im.height))
            im.resize((w, thumb_height), Image.BICUBIC).save(thumbs / name)
            made[path] = f"thumbs/{name}"
        return made[path]

    rows = []
    for qi, q in enumerate(queries):
        first_hit = next((r + 1 for r, (_, pid, _) in enumerate(q.results) if pid == q.pid), None)
        cells = []
        for rank, (path, pid, score) in enumerate(q.results, 1):
            ok = pid == q.pid
            cells.append(
                f'<figure class="{"hit" if ok else "miss"}"><img src="{thumb(path)}" alt="rank {rank}, id {pid}">'
                f"<figcaption>#{rank} id {pid}<br>{score:.3f}</figcaption></figure>")
        status = f"first correct at rank {first_hit}" if first_hit else "no correct image in the top 10"
        rows.append(f'<section><h2>Query {qi + 1} <small>(id {q.pid}; {status})</small></h2>'
                    f'<p class="q">{html.escape(q.caption)}</p><div class="row">{"".join(cells)}</div></section>')
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; }}
.row {{ display: flex; gap: 6px; flex-wrap: wrap; }}
figure {{ margin: 0; padding: 3px; border: 4px solid #ddd; background: white; text-align: center; }}
figure.hit {{ border-color: #1a9c2a; }}
figcaption {{ font-size: 11px; color: #333; }}
p.q {{ font-size: 15px; background: #eef; padding: .4em; }}
small {{ font-weight: normal; color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>
<p>Each row: the top-10 gallery images for the query, best first. A green frame marks the queried identity.</p>
{"".join(rows)}
</body></html>
"""
    page_path = out_dir / "index.html"
    atomic_write_text(page_path, page)
    return page_path
