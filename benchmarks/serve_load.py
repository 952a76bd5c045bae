"""Load test of `tbps serve`: N concurrent clients POST /search for a bounded time.

    python benchmarks/serve_load.py                       # demo index (tiny cada run), 50 clients, 30 s
    python benchmarks/serve_load.py --index my-index --clients 50 --duration 60 --rerank 16

Without --index, a demo is made under --work (default: a temporary folder): the tiny embedded
benchmark is rendered, a small cada model trained for one epoch and its 160 images indexed. The
server runs in its own process (`python -m tbps serve`); each client is an asyncio task with its
own keep-alive connection that sends the next query as soon as the previous answer arrives (a
closed loop), cycling through the benchmark's captions. Requests in the first --warmup seconds
are not counted. Reports throughput, latency percentiles and every error (non-2xx or transport).

Writes benchmarks/results/serve_load.json and .md (with machine info).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tbps.utils import atomic_write_json, atomic_write_text, machine_info  # noqa: E402

FALLBACK_QUERIES = [
    "a woman in a red coat with a black backpack",
    "a man wearing a blue shirt, grey trousers and white sneakers",
    "a girl with long black hair in a yellow dress",
    "an old man in a brown jacket carrying an umbrella",
]


def make_demo(work: Path) -> tuple[Path, list[str]]:
    """Render the tiny benchmark, train a small cada run (one epoch), index its images."""
    from tbps.cli import main
    from tbps.retrieval.index import build_index

    data, run, index = work / "data", work / "run", work / "index"
    if not (data / "reid_raw.json").is_file():
        assert main(["synth", "--out", str(data), "--preset", "tiny", "--quiet"]) == 0
    if not (run / "checkpoints" / "best" / "model.safetensors").is_file():
        overrides = ["backbone.overrides={vision_width: 64, vision_heads: 2, vision_layers: 1, text_width: 64, "
                     "text_heads: 2, text_layers: 1, embed_dim: 32}", "method.decoder_layers=1",
                     "method.rerank_k=[8]", "train.epochs=1", "train.batch_size=16", "train.device=cpu",
                     "data.tokenizer_vocab_size=300", f"data.root={data}"]
        args = ["train", "--config", "cada_tiny_scratch", "--out", str(run), "--quiet"]
        for o in overrides:
            args += ["--set", o]
        assert main(args) == 0
    if not (index / "manifest.json").is_file():
        build_index(data / "imgs", run, index, progress=False)
    return index, captions_of(data)


def captions_of(data: Path) -> list[str]:
    try:
        entries = json.loads((data / "reid_raw.json").read_text())
        return [c for e in entries for c in e["captions"]]
    except (OSError, KeyError, ValueError):
        return FALLBACK_QUERIES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, port: int, max_k: int, log: Path, timeout: float = 180.0) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "tbps", "serve", str(index), "--port", str(port), "--quiet",
           "--max-k", str(max_k)]
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not answer /healthz within {timeout:.0f} s")


async def load(base: str, queries: list[str], clients: int, duration: float, warmup: float, k: int,
               rerank: int) -> dict:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counted = {"ok": 0, "sent": 0}
    t0 = time.perf_counter()
    start_count, stop = t0 + warmup, t0 + warmup + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=httpx.Timeout(60.0)) as http:
        async def client(i: int) -> None:
            n = i
            while True:
                now = time.perf_counter()
                if now >= stop:
                    return
                body = {"text": queries[n % len(queries)], "k": k, "rerank": rerank}
                n += clients
                t = time.perf_counter()
                try:
                    r = await http.post("/search", json=body)
                    ok, err = r.status_code == 200, None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, err = False, f"{type(exc).__name__}: {exc}"[:160]
                done = time.perf_counter()
                if t >= start_count and done <= stop:
                    counted["sent"] += 1
                    if ok:
                        counted["ok"] += 1
                        latencies.append((done - t) * 1e3)
                    else:
                        errors[err] = errors.get(err, 0) + 1

        await asyncio.gather(*(client(i) for i in range(clients)))
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "requests": counted["sent"], "ok": counted["ok"], "errors": sum(errors.values()), "error_kinds": errors,
        "throughput_rps": round(counted["ok"] / duration, 2),
        "latency_ms": {p: round(float(np.percentile(lat, q)), 2)
                       for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))}
                      | {"mean": round(float(lat.mean()), 2)},
    }


def to_markdown(res: dict) -> str:
    m, c, s = res["machine"], res["config"], res["server"]
    lat = res["result"]["latency_ms"]
    r = res["result"]
    return "\n".join([
        "# Search service under load",
        "",
        f"Machine: {m['cpu']} ({m['cpu_usable']} usable cores, shared by server and clients), "
        f"{m['memory_gb']} GB RAM, Python {m['python']}, torch {m['torch']}. Date: {res['date']}, load average "
        f"before the run {', '.join(f'{x:.1f}' for x in res['load_average_before'])}.",
        f"Server: `tbps serve` (one uvicorn process), {s['method']} model, {s['images']} images, "
        f"{s['index']['kind']} index. Requests: POST /search, k = {c['k']}, rerank = {c['rerank']}.",
        f"Clients: {c['clients']} concurrent (closed loop, keep-alive), {c['duration_s']} s measured after "
        f"{c['warmup_s']} s warm-up.",
        "",
        "| clients | requests | errors | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {c['clients']} | {r['requests']} | {r['errors']} | {r['throughput_rps']} | {lat['p50']} | "
        f"{lat['p90']} | {lat['p99']} | {lat['max']} |",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default=None, help="index folder (default: make a demo index under --work)")
    p.add_argument("--work", default=None, help="folder for the demo data, run and index (default: a temp folder)")
    p.add_argument("--queries-from", default=None, help="reid_raw.json-style file with captions to send")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds (after the warm-up)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rerank", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="serve_load")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    tmp = None
    if args.index:
        index = Path(args.index)
        queries = captions_of(Path(args.queries_from).parent) if args.queries_from else FALLBACK_QUERIES
    else:
        if args.work:
            work = Path(args.work)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="tbps-load-")
            work = Path(tmp.name)
        work.mkdir(parents=True, exist_ok=True)
        index, queries = make_demo(work)
    port = free_port()
    load_before = os.getloadavg()
    server_log = Path(tempfile.gettempdir()) / f"tbps-serve-load-{port}.log"
    server = start_server(index, port, max_k=max(100, args.k), log=server_log)
    try:
        import httpx

        base = f"http://127.0.0.1:{port}"
        info = httpx.get(base + "/info", timeout=10).json()
        print(f"server up: {info['images']} images, {info['method']}; {args.clients} clients for "
              f"{args.duration:.0f} s ...", flush=True)
        result = asyncio.run(load(base, queries, args.clients, args.duration, args.warmup, args.k, args.rerank))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        if tmp is not None:
            tmp.cleanup()
    res = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_before": load_before,
           "config": {"clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup, "k": args.k,
                      "rerank": args.rerank, "index": str(index) if args.index else "demo (tiny cada, 160 images)"},
           "server": {k: info[k] for k in ("method", "images", "index")}, "result": result}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{args.name}.json", res)
    atomic_write_text(out / f"{args.name}.md", to_markdown(res))
    print(to_markdown(res))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
