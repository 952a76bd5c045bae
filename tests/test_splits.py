"""What the module splits of issue 13 promise: old import paths keep working, the attribute lexicon
ships as package data, and one function owns the per-process share of a global batch."""
from __future__ import annotations

from pathlib import Path

import pytest

from tbps.data.loader import EpochSampler, ShardedBatchSampler, batch_share

ROOT = Path(__file__).resolve().parents[1]


def test_pretrained_api_still_importable_from_models_pretrained() -> None:
    import tbps.models.pretrained as pretrained
    from tbps.models import pretrained_files, pretrained_keys

    for name in pretrained.__all__:
        assert hasattr(pretrained, name), name
    # one object each, defined where it now lives: reading files, converting keys, loading
    assert pretrained.read_checkpoint is pretrained_files.read_checkpoint
    assert pretrained.PretrainedLoadError is pretrained_files.PretrainedLoadError
    assert pretrained.detect_layout is pretrained_keys.detect_layout
    assert pretrained.convert_state_dict is pretrained_keys.convert_state_dict
    assert pretrained_keys.convert_state_dict.__module__ == "tbps.models.pretrained_keys"


def test_attribute_lexicon_is_package_data() -> None:
    from tbps.data import attributes

    assert attributes.LEXICON_FILE.parent == ROOT / "src" / "tbps" / "data"
    assert '"data/*.yaml"' in (ROOT / "pyproject.toml").read_text()
    raw = attributes._read_lexicon_file()
    assert set(raw) == {"modifiers", "nouns", "compound_suffix", "ambiguous", "connectors", "intensifiers",
                        "copulas", "relatives", "stopwords", "weak", "not_before_of", "spelling"}
    # YAML would read a bare `n` or `on` as a boolean: every word list is text
    assert "n" in attributes._CONNECTORS and "on" in attributes._STOPWORDS and "no" in attributes._STOPWORDS
    assert attributes.LEXICON[("sky", "blue")] == ("mod", "colour", None)


@pytest.mark.parametrize("batch_size,world_size", [(8, 1), (8, 2), (12, 3), (64, 4)])
def test_batch_share_tiles_the_global_batch_in_rank_order(batch_size: int, world_size: int) -> None:
    shares = [batch_share(batch_size, r, world_size) for r in range(world_size)]
    rows = [i for s in shares for i in range(batch_size)[s]]
    assert rows == list(range(batch_size))
    assert {s.stop - s.start for s in shares} == {batch_size // world_size}


def test_the_sampler_loads_images_of_exactly_its_share() -> None:
    for rank in range(2):
        sampler = ShardedBatchSampler(EpochSampler(30, 0), 8, rank, 2)
        share = batch_share(8, rank, 2)
        for batch in sampler:
            assert [j for j, it in enumerate(batch) if it.load_image] == list(range(8)[share])
    with pytest.raises(ValueError, match="train.batch_size=9 must be divisible by the 2 processes"):
        batch_share(9, 0, 2)
