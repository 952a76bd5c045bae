"""Precision and memory options: bf16 autocast with fp32 losses, fp16 only on CUDA, gradient
checkpointing (same gradients), the image cache (same pixels) and the attribute-span cache."""
import pytest
import torch

from dist_worker import one_step
from fixtures import cli_train_args, render_tiny_benchmark
from tbps.cli import main
from tbps.data.attributes import _phrases_cached
from tbps.data.loader import ImageCache, TrainPairs, warm_collate_extras
from tbps.data.records import TrainSample
from tbps.data.transforms import build_transform
from tbps.engine.trainer import autocast, check_amp
from tbps.methods.cada import ndf_loss
from tbps.methods.losses import sdm_loss


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return render_tiny_benchmark(tmp_path_factory.mktemp("synth") / "tiny")


@pytest.mark.parametrize("method", ["irra", "cada"])  # pre-LN stacks (CLIP) and BERT layers (BLIP)
def test_gradient_checkpointing_gives_the_same_gradients(tiny_data, tmp_path, method):
    loss_a, grads_a = one_step(method, tiny_data, tmp_path / "run")
    loss_b, grads_b = one_step(method, tiny_data, tmp_path / "run", extra=["train.grad_checkpointing=true"])
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], rtol=1e-5, atol=1e-6), name


def test_bf16_step_is_close_to_fp32(tiny_data, tmp_path):
    loss_32, _ = one_step("uca", tiny_data, tmp_path / "run")
    loss_16, grads_16 = one_step("uca", tiny_data, tmp_path / "run", extra=["train.amp=bf16"])
    for k in ("dcl", "pcl_inter", "rec", "loss"):
        assert loss_16[k] == pytest.approx(loss_32[k], rel=0.05), k
    assert all(bool(torch.isfinite(g).all()) for g in grads_16.values())


def test_similarity_losses_stay_fp32_under_autocast():
    torch.manual_seed(0)
    v, t = torch.randn(16, 64), torch.randn(16, 64)
    v[8:] = t[8:] + 0.01 * torch.randn(8, 64)  # near-duplicates: cosines close to 1, where bf16 steps are coarse
    pids = torch.arange(16) // 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sdm_amp, ndf_amp = sdm_loss(v, t, pids), ndf_loss(v, t, pids)
    assert sdm_amp.dtype == ndf_amp.dtype == torch.float32
    assert float(sdm_amp) == pytest.approx(float(sdm_loss(v, t, pids)), rel=1e-6)
    assert float(ndf_amp) == pytest.approx(float(ndf_loss(v, t, pids)), rel=1e-6)


def test_amp_choices():
    cpu = torch.device("cpu")
    assert check_amp(None, cpu) is None and check_amp("fp32", cpu) is None
    assert check_amp("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="CUDA"):
        check_amp("fp16", cpu)
    with pytest.raises(ValueError, match="unknown train.amp"):
        check_amp("fp8", cpu)
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    if torch.cuda.is_available():
        assert check_amp("fp16", torch.device("cuda")) == "fp16"


def test_fp16_training_on_cpu_fails_with_a_clear_message(tiny_data, tmp_path, capsys):
    args = cli_train_args("irra_tiny_scratch", tiny_data, tmp_path / "run", ["train.device=cpu", "train.amp=fp16"])
    assert main(args) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_image_cache_gives_the_same_training_tensors(tiny_data):
    from tbps.data import load_dataset

    ds = load_dataset("synth", tiny_data)
    samples: list[TrainSample] = ds.train[:12]
    tf = build_transform(64, 32, True)  # the fixture's images are 128x64: the cache resizes them
    cache = ImageCache([s.image_path for s in samples], 64, 32, threads=2)
    assert cache.array.shape == (len({s.image_path for s in samples}), 64, 32, 3)
    plain, cached = TrainPairs(samples, tf, 7), TrainPairs(samples, tf, 7, image_cache=cache)
    for i in range(len(samples)):
        a, b = plain[(i, 2, True)], cached[(i, 2, True)]
        assert torch.equal(a["image"], b["image"])
    assert cached[(0, 2, False)]["image"] is None  # another process's sample: caption only


def test_attribute_spans_are_computed_once_per_dataset():
    captions = [f"A woman in a red coat number {i} with black boots." for i in range(300)]
    calls = []

    def extras(caps, tokens):
        calls.append(len(caps))
        return {}

    class Tok:
        def encode(self, caps, n):
            return None

    assert warm_collate_extras(extras, captions + captions[:50], Tok(), 32, chunk=128) == 300
    assert calls == [128, 128, 44]
    before = _phrases_cached.cache_info()
    from tbps.data.attributes import find_attribute_phrases

    for c in captions:
        find_attribute_phrases(c)
    for c in captions:  # the cache holds a whole dataset, not only the last few thousand captions
        find_attribute_phrases(c)
    info = _phrases_cached.cache_info()
    assert info.hits - before.hits >= 300 and info.maxsize >= 80_000


def test_worker_processes_and_image_cache_do_not_change_training(tiny_data, tmp_path):
    """2 persistent workers + pinned memory (on CUDA) + the image cache train the same weights as the
    main process alone: each sample's augmentation is seeded by (seed, epoch, index), and the epoch
    reaches persistent workers with every sample (TrainItem), not through set_epoch."""
    from safetensors.torch import load_file

    small = ["backbone.overrides={vision_width: 32, vision_heads: 2, vision_layers: 1, text_width: 32, "
             "text_heads: 2, text_layers: 1, embed_dim: 32}", "method.cross_layers=1", "train.epochs=2",
             "train.batch_size=16", "data.tokenizer_vocab_size=300", "train.eval_every=2"]
    runs = {}
    for name, extra in (("plain", ["data.num_workers=0"]), ("workers", ["data.num_workers=2", "data.cache_images=true"])):
        runs[name] = tmp_path / name
        assert main(cli_train_args("uca_tiny_scratch", tiny_data, runs[name], small + extra)) == 0
    a, b = (load_file(str(r / "checkpoints" / "last" / "model.safetensors")) for r in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
