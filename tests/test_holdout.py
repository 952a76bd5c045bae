"""`data.val_from_train`: a validation split held out of train for datasets without one (ICFG-PEDES)."""
from pathlib import Path

import pytest

from fixtures import write_icfg_fixture
from tbps.data import load_dataset
from tbps.data.holdout import hold_out_validation
from tbps.engine.build import load_data
from tbps.engine.experiment import load_experiment_config


def test_held_out_identities_are_disjoint_from_training(tmp_path: Path) -> None:
    fx = write_icfg_fixture(tmp_path, n_ids=12, split_ids={"train": 10, "test": 2}, images_per_id=2,
                            captions_per_image=2)
    full = load_dataset("icfg-pedes", fx.root)
    assert full.val is None and full.num_train_ids == 10
    ds = hold_out_validation(full, 0.2)
    assert ds.val is not None and ds.val.num_ids == 2 and ds.num_train_ids == 8
    assert ds.val.num_images == 4 and ds.val.num_queries == 8  # 2 ids x 2 images x 2 captions
    held_paths, train_paths = set(ds.val.image_paths), {s.image_path for s in ds.train}
    assert not held_paths & train_paths and held_paths | train_paths == {s.image_path for s in full.train}
    # remaining ids and images renumbered 0.., every caption kept on exactly one side
    assert sorted({s.pid for s in ds.train}) == list(range(8))
    assert sorted({s.image_index for s in ds.train}) == list(range(16))
    assert len(ds.train) + ds.val.num_queries == len(full.train)
    for cap, img in zip(ds.val.captions, ds.val.caption_image_index):
        assert any(s.caption == cap and s.image_path == ds.val.image_paths[img] for s in full.train)
    assert ds.test is full.test
    # deterministic: the same split every time (independent of the run's seed)
    again = hold_out_validation(load_dataset("icfg-pedes", fx.root), 0.2)
    assert again.val.image_paths == ds.val.image_paths


def test_switch_in_the_config_and_its_refusals(tmp_path: Path) -> None:
    fx = write_icfg_fixture(tmp_path / "icfg", n_ids=6, split_ids={"train": 5, "test": 1})
    cfg = load_experiment_config("uca_tiny_scratch", ["data.dataset=icfg-pedes", f"data.root={fx.root}",
                                              "data.check_images=false"])
    assert cfg["data"]["val_from_train"] == 0.0 and load_data(cfg).val is None  # default: today's behaviour
    cfg["data"]["val_from_train"] = 0.4
    assert load_data(cfg).val.num_ids == 2
    ds = load_dataset("icfg-pedes", fx.root)
    with pytest.raises(ValueError, match="val_from_train=1.0"):
        hold_out_validation(ds, 1.0)
    with pytest.raises(ValueError, match="leave none"):
        hold_out_validation(ds, 0.95)
    with_val = hold_out_validation(ds, 0.2)
    with pytest.raises(ValueError, match="has its own validation split"):
        hold_out_validation(with_val, 0.2)
