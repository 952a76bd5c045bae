"""benchmarks/embedding_rank.py: the effective rank that exposes a collapsed foundation."""
import sys
from pathlib import Path

import pytest
import torch

from tbps.evaluation import effective_rank

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import embedding_rank  # noqa: E402


def test_effective_rank_counts_the_directions_the_embeddings_use() -> None:
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(2000, 16, generator=g)
    assert 14.0 < effective_rank(spread) <= 16.0
    # the same number of points on a 2-d plane of the 16-d space (plus a constant offset): about 2
    plane = torch.randn(2000, 2, generator=g) @ torch.randn(2, 16, generator=g) + 5.0
    assert 1.0 < effective_rank(plane) < 2.1
    assert embedding_rank.effective_rank is effective_rank  # the benchmark measures with the library's


def test_effective_rank_names_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        effective_rank(torch.ones(5))
    with pytest.raises(ValueError, match="N >= 2"):
        effective_rank(torch.ones(1, 8))


def test_mean_cosine_separates_a_narrow_cone_from_spread_embeddings() -> None:
    g = torch.Generator().manual_seed(1)
    spread = torch.randn(500, 32, generator=g)
    cone = spread * 0.1 + torch.ones(32)
    assert abs(embedding_rank.mean_off_diagonal_cosine(spread)) < 0.05
    assert embedding_rank.mean_off_diagonal_cosine(cone) > 0.9


def test_a_scratch_config_is_measured_on_the_validation_split(tmp_path: Path) -> None:
    from tbps.synth import generate
    data = tmp_path / "bench"
    generate(data, preset="tiny", seed=0, height=64, width=32, workers=1, progress=False)
    row = embedding_rank.from_config("irra_tiny_scratch", str(data), seed=0)
    assert row["num_images"] > 1 and row["dim"] == 128
    assert 1.0 <= row["image_effective_rank"] <= row["dim"] and -1.0 <= row["image_mean_cosine"] <= 1.0
