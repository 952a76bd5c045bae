import pytest
import torch

from tbps.engine.checkpoint import CheckpointError, load_model_weights, resolve_checkpoint, save_checkpoint


def test_checkpoint_round_trip_and_interrupted_swap(tmp_path):
    m = torch.nn.Linear(3, 2)
    folder = tmp_path / "last"
    save_checkpoint(folder, m, {"step": 1}, {"num_classes": 2})
    m2 = torch.nn.Linear(3, 2)
    load_model_weights(folder, m2)
    assert torch.equal(m.weight, m2.weight)
    # a kill between the two renames leaves only NAME.old: it is still found
    folder.rename(tmp_path / "last.old")
    assert resolve_checkpoint(folder) == tmp_path / "last.old"
    # a half-written NAME.tmp is ignored and replaced by the next save
    (tmp_path / "last.tmp").mkdir()
    save_checkpoint(folder, m, None, {"num_classes": 2})
    assert resolve_checkpoint(folder) == folder
    assert not (tmp_path / "last.tmp").exists() and not (tmp_path / "last.old").exists()


def test_mismatched_checkpoint_names_keys(tmp_path):
    save_checkpoint(tmp_path / "c", torch.nn.Linear(3, 2), None, {})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model_weights(tmp_path / "c", torch.nn.Sequential(torch.nn.Linear(3, 2)))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model_weights(tmp_path / "nothing", torch.nn.Linear(3, 2))
