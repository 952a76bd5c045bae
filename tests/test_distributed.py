"""Multi-process training: 2 gloo processes on a CPU match one process with the same global batch.

Each process takes 4 of the global batch of 8; losses over the batch (SDM, NDF + the CADA
hard-negative pool, UCA's distribution and point contrast) use features gathered with gradient,
per-sample means are normalised by global counts, and DDP averages the gradients. The loss parts
(averaged over processes) and every parameter's gradient must equal the single-process ones.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_worker import one_step
from fixtures import render_tiny_benchmark
from tbps.data.loader import EpochSampler, ShardedBatchSampler, TrainCollate, TrainItem

METHODS = ["irra", "cada", "uca"]
WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return render_tiny_benchmark(tmp_path_factory.mktemp("synth") / "tiny")


def test_two_gloo_processes_match_one_process(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    single = {m: one_step(m, tiny_data, runs / m) for m in METHODS}  # also saves each tokenizer
    port = _free_port()
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
           "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), str(tiny_data), str(runs), *METHODS],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for m in METHODS:
        loss_1, grads_1 = single[m]
        for rank_result in ranks:
            loss_n, grads_n = rank_result[m]
            assert loss_n.keys() == loss_1.keys()
            for k in loss_1:
                assert loss_n[k] == pytest.approx(loss_1[k], rel=1e-5, abs=1e-6), (m, k)
            assert grads_n.keys() == grads_1.keys()
            nonzero = 0
            for name, g1 in grads_1.items():
                gn = grads_n[name]
                scale = max(1.0, float(g1.abs().max()))
                assert float((gn - g1).abs().max()) <= 1e-5 * scale, (m, name, float((gn - g1).abs().max()))
                nonzero += int(g1.abs().max() > 0)
            assert nonzero > 0.9 * len(grads_1), m  # the comparison is not vacuous


def test_sharded_batches_concatenate_to_the_single_process_batch():
    pids = [i // 3 for i in range(30)]
    single = ShardedBatchSampler(EpochSampler(30, 0, pids, 1), 8)
    shards = [ShardedBatchSampler(EpochSampler(30, 0, pids, 1), 8, r, 2) for r in range(2)]
    for s in (single, *shards):
        s.set_epoch(3, start_batch=1)  # resumed mid-epoch
    one = list(single)
    many = [list(s) for s in shards]
    assert len(one) == 30 // 8 - 1 == len(many[0]) == len(many[1])
    for b, b0, b1 in zip(one, *many):
        assert [it.index for it in b] == [it.index for it in b0] == [it.index for it in b1]
        assert all(it.load_image for it in b) and all(it.epoch == 3 for it in b)
        assert [it.load_image for it in b0] == [True] * 4 + [False] * 4
        assert [it.load_image for it in b1] == [False] * 4 + [True] * 4
    with pytest.raises(ValueError, match="divisible"):
        ShardedBatchSampler(EpochSampler(30, 0), 9, 0, 2)


class _Tok:
    def encode(self, texts, max_len):
        from types import SimpleNamespace

        lengths = [len(t.split()) + 2 for t in texts]
        ids = torch.zeros(len(texts), max_len, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            ids[i, :n] = torch.arange(1, n + 1)
            mask[i, :n] = 1
        return SimpleNamespace(ids=ids, attention_mask=mask, eot_index=torch.tensor(lengths) - 1)


def test_collate_keeps_local_rows_and_the_global_view():
    items = [{"image": torch.full((3, 2, 2), float(i)) if 2 <= i < 4 else None, "caption": "a " * (i + 1),
              "pid": i // 2, "image_index": i, "index": 10 + i} for i in range(6)]
    collate = TrainCollate(_Tok(), 16, extras=lambda caps, tb: {"flags": tb.attention_mask.bool()})
    batch = collate(items)
    assert batch["images"].shape[0] == 2 and batch["images"][0, 0, 0, 0] == 2
    assert batch["pids"].tolist() == [1, 1] and batch["index"].tolist() == [12, 13]
    shard = batch["shard"]
    assert (shard["offset"], shard["size"]) == (2, 2)
    g = shard["global"]
    assert g["tokens"]["ids"].shape == (6, 8)  # trimmed to the global batch's longest caption
    assert torch.equal(batch["tokens"]["ids"], g["tokens"]["ids"][2:4])
    assert torch.equal(batch["flags"], g["flags"][2:4])
    assert g["image_index"].tolist() == list(range(6)) and batch["image_index"].tolist() == [2, 3]
    full = collate([{**it, "image": torch.zeros(3, 2, 2)} for it in items])
    assert "shard" not in full and torch.equal(full["tokens"]["ids"], g["tokens"]["ids"])
    assert isinstance(TrainItem(1, 2), tuple) and TrainItem(1, 2).load_image


def test_tbps_train_nproc_2_runs_the_whole_loop(tiny_data, tmp_path, capsys):
    """`tbps train --nproc 2`: torchrun, gloo on a CPU, rank-0 logs and checkpoints, distributed validation."""
    from fixtures import cli_train_args
    from tbps.cli import main

    out = tmp_path / "run"
    small = ["backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, "
             "text_heads: 2, text_layers: 1, embed_dim: 32}", "method.cross_layers=1", "train.epochs=1",
             "train.batch_size=16", "data.tokenizer_vocab_size=300", "train.log_every=4", "train.device=cpu"]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    assert main(cli_train_args("irra_tiny_scratch", tiny_data, out, small) + ["--nproc", "2"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["world_size"] == 2 and records[0]["per_process_batch"] == 8
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps)) and len(steps) >= 2  # one writer: no duplicated lines
    assert any(r.get("split") == "val" and r["t2i/num_queries"] == 64 for r in records)
    assert records[-1]["summary"]["world_size"] == 2
    for name in ("last", "best"):
        assert (out / "checkpoints" / name / "model.safetensors").is_file()
    assert not (out / "checkpoints" / "last.tmp").exists()
