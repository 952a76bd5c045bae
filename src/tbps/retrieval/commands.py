"""CLI subcommands of the search product: `index build|add|remove|info`, `search`, `serve`, `export`.

Registered on the main parser by `tbps.cli.build_parser` through `add_commands`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..argtypes import float_in_range, non_negative_int, port_number, positive_int


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _report_skipped(skipped: list[dict], limit: int = 20) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
    for s in skipped[:limit]:
        print(f"  {s['path']}: {s['error']}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (all listed in manifest.json)", file=sys.stderr)


def _milvus_target(args: argparse.Namespace):
    """Where a --backend milvus index lives; the token only from $TBPS_MILVUS_TOKEN (never argv, never stored)."""
    import os

    from .vectors import TOKEN_ENV, MilvusTarget

    tls = {"secure": True, "server_pem_path": str(Path(args.milvus_ca).resolve())} if args.milvus_ca else None
    return MilvusTarget(uri=args.milvus_uri, collection=args.collection, token=os.environ.get(TOKEN_ENV) or None,
                        tls=tls, index_type=args.milvus_index)


def _cmd_index_build(args: argparse.Namespace) -> int:
    import os

    from .index import build_index

    if args.backend != "milvus" and (args.milvus_uri or args.collection or args.milvus_ca or args.milvus_index):
        raise ValueError("--milvus-uri / --collection / --milvus-ca / --milvus-index need --backend milvus")
    if args.nproc and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from ..engine.distributed import launch_processes

        return launch_processes(args.nproc, args.argv)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    result = build_index(args.gallery, args.model, args.out, batch_size=args.batch_size, kind=args.kind,
                         threshold=args.approx_threshold, recall_target=args.recall_target,
                         num_workers=args.workers, device=args.device, overwrite=args.overwrite,
                         backend=args.backend, milvus=_milvus_target(args) if args.backend == "milvus" else None,
                         recall_captions=args.recall_captions, progress=not args.quiet, log=log)
    if result is None:  # a worker rank of a multi-process build: rank 0 reports
        return 0
    _report_skipped(result["skipped"])
    _print_json({k: v for k, v in result.items() if k != "skipped"} | {"skipped": len(result["skipped"])})
    if not result["images"]:  # image files were there, none could be read
        print(f"tbps index build: error: the index in {args.out} holds no images: all {len(result['skipped'])} "
              f"image files under {args.gallery} are unreadable (listed above)", file=sys.stderr)
        return 1
    return 0


def _cmd_index_add(args: argparse.Namespace) -> int:
    from .index import add_to_index

    result = add_to_index(args.index, args.paths, model=args.model, batch_size=args.batch_size,
                          num_workers=args.workers, device=args.device, progress=not args.quiet)
    _report_skipped(result.pop("skipped_now"))
    result.pop("skipped")
    result["unchanged"] = len(result["unchanged"])
    _print_json(result)
    return 0


def _cmd_index_remove(args: argparse.Namespace) -> int:
    from .index import remove_from_index

    result = remove_from_index(args.index, args.paths, missing=args.missing)
    result.pop("skipped")
    for p in result["not_found"]:
        print(f"tbps index remove: not in the index: {p}", file=sys.stderr)
    _print_json(result)
    return 1 if result["not_found"] else 0


def _cmd_index_info(args: argparse.Namespace) -> int:
    from .storage import read_manifest, summary

    m = read_manifest(args.index)
    out = summary(Path(args.index), m)
    out["skipped"] = len(out["skipped"])
    if "faiss" in m:
        out["faiss"] = m["faiss"]
    else:
        out["milvus"] = m["milvus"]
    out["history"] = m.get("history", [])
    _print_json(out)
    return 0


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _cmd_search(args: argparse.Namespace) -> int:
    from .searcher import Searcher

    searcher = Searcher(args.index, model=args.model, device=args.device)
    res = searcher.search(args.text, k=args.k, rerank=args.rerank)
    if args.html:
        from .html import write_results_html

        path = write_results_html(res, args.html)
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        _print_json(res.to_dict())
        return 0
    head = f"{len(res.hits)} results for {res.query!r} ({res.method}"
    head += f", top {res.rerank} re-ranked" if res.rerank else ""
    head += f", query uncertainty {res.query_uncertainty:.4g}" if res.query_uncertainty is not None else ""
    print(head + ")")
    has_p = any(h.match_probability is not None for h in res.hits)
    print(f"{'rank':>4}  {'score':>8}  {'p(match)':>8}  path" if has_p else f"{'rank':>4}  {'score':>8}  path")
    for h in res.hits:
        cols = [f"{h.rank:>4}", f"{h.score:>8.4f}"] + ([f"{_fmt(h.match_probability):>8}"] if has_p else []) + [h.path]
        print("  ".join(cols))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.index, host=args.host, port=args.port, model=args.model, device=args.device,
          max_k=args.max_k, log_level="warning" if args.quiet else "info")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    if not args.onnx:
        raise ValueError("tbps export: give --onnx OUT_DIR (the only format so far)")
    result = export_onnx(args.run, args.onnx, checkpoint=args.checkpoint, opset=args.opset, check=not args.no_check)
    _print_json(result)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from . import defaults as fx

    ix = sub.add_parser("index", help="build and maintain a search index over an image folder")
    isub = ix.add_subparsers(dest="index_command", required=True)

    b = isub.add_parser("build", help="encode every image under a folder into a new index")
    b.add_argument("gallery", help="folder of images (jpg, png, bmp, webp; searched recursively)")
    b.add_argument("--model", required=True, help="run folder (uses checkpoints/best) or checkpoint folder")
    b.add_argument("--out", required=True, help="index folder to create (a killed build resumes here)")
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--kind", default="auto", choices=fx.KINDS,
                   help="faiss index: auto (exact below --approx-threshold images, ivf_pca above), flat, ivf, "
                        "ivf_pca, hnsw")
    b.add_argument("--approx-threshold", type=positive_int, default=fx.DEFAULT_APPROX_THRESHOLD,
                   help=f"gallery size from which auto uses an approximate index (default {fx.DEFAULT_APPROX_THRESHOLD})")
    b.add_argument("--recall-target", type=float_in_range(0.0, 1.0, low_inclusive=False),
                   default=fx.DEFAULT_RECALL_TARGET,
                   help="approximate index: widen the search until recall@10 vs exact reaches this "
                        f"(default {fx.DEFAULT_RECALL_TARGET})")
    b.add_argument("--recall-captions", default=None, metavar="FILE",
                   help="queries (one per line) to measure an approximate index's recall on "
                        "(default: the run's validation captions)")
    b.add_argument("--backend", default="faiss", choices=("faiss", "milvus"),
                   help="faiss: a file in the index folder; milvus: a Milvus collection (Milvus Lite in the "
                        "folder unless --milvus-uri)")
    b.add_argument("--milvus-uri", default=None, help="Milvus server / cluster, e.g. https://HOST:19530 "
                                                      "(token from $TBPS_MILVUS_TOKEN, never stored)")
    b.add_argument("--collection", default=None, help="Milvus collection (default tbps_<index folder name>)")
    b.add_argument("--milvus-ca", default=None, metavar="PEM", help="TLS: the server's CA certificate")
    b.add_argument("--milvus-index", default=None, help="Milvus index type (default FLAT on Milvus Lite, "
                                                        "AUTOINDEX on a server)")
    b.add_argument("--nproc", type=positive_int, default=None,
                   help="encode with N processes (torchrun, gloo on CPU), each a shard of the gallery")
    b.add_argument("--workers", type=non_negative_int, default=0, help="image-decoding worker processes")
    b.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index in --out")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_index_build)

    a = isub.add_parser("add", help="add image files or folders to an index (changed files are re-encoded)")
    a.add_argument("index")
    a.add_argument("paths", nargs="+")
    a.add_argument("--model", default=None, help="the index's model from a new place (must be the same weights)")
    a.add_argument("--batch-size", type=positive_int, default=64)
    a.add_argument("--workers", type=non_negative_int, default=0)
    a.add_argument("--device", default=None)
    a.add_argument("--quiet", action="store_true")
    a.set_defaults(func=_cmd_index_add)

    r = isub.add_parser("remove", help="remove image files, or everything under folders, from an index")
    r.add_argument("index")
    r.add_argument("paths", nargs="*")
    r.add_argument("--missing", action="store_true", help="also remove images whose files no longer exist")
    r.set_defaults(func=_cmd_index_remove)

    i = isub.add_parser("info", help="print an index's summary, faiss settings and history")
    i.add_argument("index")
    i.set_defaults(func=_cmd_index_info)

    s = sub.add_parser("search", help="rank an index's images for a text description")
    s.add_argument("index")
    s.add_argument("text")
    s.add_argument("-k", type=positive_int, default=10, help="number of results (default 10)")
    s.add_argument("--rerank", type=non_negative_int, default=None, metavar="K",
                   help="re-score the top K with the model's second stage, for methods whose capabilities "
                        "declare re-ranking (`tbps index info` lists the index's capabilities)")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.add_argument("--html", default=None, metavar="OUT", help="write a results page with thumbnails")
    s.add_argument("--model", default=None, help="the index's model from a new place (must be the same weights)")
    s.add_argument("--device", default=None)
    s.set_defaults(func=_cmd_search)

    v = sub.add_parser("serve", help="search service (FastAPI) and web page for an index")
    v.add_argument("index")
    v.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=port_number, default=8000)
    v.add_argument("--max-k", type=positive_int, default=100, help="largest k a request may ask for")
    v.add_argument("--model", default=None)
    v.add_argument("--device", default=None)
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=_cmd_serve)

    e = sub.add_parser("export", help="export a run's image and text encoders (ONNX)")
    e.add_argument("run", help="run folder (uses checkpoints/best) or checkpoint folder")
    e.add_argument("--onnx", required=True, metavar="OUT_DIR", help="folder for the .onnx files and export.json")
    e.add_argument("--checkpoint", default=None, help="best (default) or last, when RUN is a run folder")
    e.add_argument("--opset", type=positive_int, default=17)
    e.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs torch comparison")
    e.set_defaults(func=_cmd_export)
