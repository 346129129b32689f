import pytest
import torch

from detector.engine.state import TrainState
from detector.engine import find_last_checkpoint, load_checkpoint, save_checkpoint
from detector.errors import CheckpointError


def test_round_trip_and_last_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "model_0000010.pth", TrainState(model=model, optimizer=opt, iteration=10), config={"a": 1})
    assert find_last_checkpoint(tmp_path) == path
    state = load_checkpoint(path)
    assert state["iteration"] == 10 and state["config"] == {"a": 1}
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(state["model"])
    torch.testing.assert_close(fresh.weight, model.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "model_final.pth", TrainState(model=model, iteration=1))
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, TrainState(model=torch.nn.Linear(3, 2), iteration=2))
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bad_files_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": 1}, tmp_path / "whole.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((tmp_path / "whole.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(cut)
    torch.save({"weights": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a detector checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
