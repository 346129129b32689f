import pathlib

import pytest
import torch

from detector.engine.state import TrainState
from detector.engine import build_optimizer, find_last_checkpoint, load_checkpoint, save_checkpoint
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
    # What torch's weights-only unpickler refused, in its own words up to " was not ...".
    torch.save({"w": torch.zeros(1), "p": pathlib.PurePosixPath("a")}, tmp_path / "object.pth")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "object.pth")
    assert str(e.value) == (
        f"{tmp_path / 'object.pth'}: refused: it holds Python objects other than tensors and plain types, which could "
        "run code when loaded (Unsupported global: GLOBAL pathlib.PurePosixPath); re-save it as a plain state dict "
        "from a trusted source"
    )
    opcode = tmp_path / "opcode.pth"
    opcode.write_bytes(b"\x80\x04garbage")  # a pickle whose next opcode the unpickler does not take
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(opcode)
    assert str(e.value) == (
        f"cannot read checkpoint {opcode}: not a torch file of tensors and plain types "
        "(torch.load(weights_only=True): Unsupported operand 103); files that hold pickled objects are refused"
    )


def test_resume_keeps_this_runs_hyperparameters_and_the_checkpoints_buffers():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saved = TrainState(model=model, optimizer=opt, iteration=7).state_dict()
    # The resumed run's config says lr 0.05 and momentum 0.8 (a changed recipe): those win; the
    # momentum buffers and the iteration come from the checkpoint.
    fresh = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.05, momentum=0.8, weight_decay=1e-4)
    state = TrainState(model=fresh, optimizer=opt2)
    state.load_state_dict(saved)
    assert state.iteration == 7
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["momentum"] == 0.8
    assert opt2.param_groups[0]["params"] == list(fresh.parameters())
    torch.testing.assert_close(opt2.state[fresh.weight]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"])
    # Parts this state lacks (no optimizer: evaluation; no GradScaler: a float32 run of an fp16
    # checkpoint) are skipped, not an error.
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    saved["grad_scaler"] = scaler.state_dict()
    weights_only = TrainState(model=torch.nn.Linear(3, 2))
    weights_only.load_state_dict(saved)
    torch.testing.assert_close(weights_only.model.weight, model.weight)
    resumed_scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    TrainState(model=torch.nn.Linear(3, 2), scaler=resumed_scaler).load_state_dict(saved)
    assert resumed_scaler.get_scale() == 256.0


def test_resume_with_other_optimizer_groups_is_one_clear_error():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(3, 3)
            self.head = torch.nn.Linear(3, 2)

    net = Net()
    saved = TrainState(model=net, optimizer=build_optimizer(net, base_lr=0.1, momentum=0.9, weight_decay=0.0),
                       iteration=3).state_dict()
    split = build_optimizer(net, base_lr=0.1, momentum=0.9, weight_decay=0.0, backbone_lr_factor=2.0)
    with pytest.raises(ValueError, match="2 parameter groups and this run's 4$"):
        TrainState(model=net, optimizer=split).load_state_dict(saved)


def test_the_format_number_is_written_and_a_newer_one_refused(tmp_path):
    from detector.engine import CHECKPOINT_FORMAT

    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "model_0000001.pth", TrainState(model=model, iteration=1))
    assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT == 1
    legacy = {"model": model.state_dict(), "iteration": 1}  # the first files carried no number
    torch.save(legacy, tmp_path / "legacy.pth")
    assert load_checkpoint(tmp_path / "legacy.pth")["iteration"] == 1
    for bad in (CHECKPOINT_FORMAT + 1, 0, "1", True):
        torch.save({**legacy, "format": bad}, tmp_path / "other.pth")
        with pytest.raises(CheckpointError, match=rf"other\.pth has checkpoint format {bad!r}; .* reads formats 1 to 1: .*upgrade"):
            load_checkpoint(tmp_path / "other.pth")


def test_prune_keeps_the_newest_by_iteration_never_the_final_one(tmp_path):
    from detector.engine.checkpoint import prune_checkpoints

    # 10,000,000 sorts before 9,999,999 as text: the order must be the iteration's.
    names = ["model_0000005.pth", "model_9999999.pth", "model_10000000.pth", "model_final.pth"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert prune_checkpoints(tmp_path, 0) == [] and len(list(tmp_path.iterdir())) == 4  # 0 keeps everything
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["model_0000005.pth"]
    assert [p.name for p in prune_checkpoints(tmp_path, 1)] == ["model_9999999.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_10000000.pth", "model_final.pth"]


def test_class_names_are_read_only_from_a_non_empty_list_of_strings():
    from detector.engine.checkpoint import checkpoint_class_names

    def stored(names):
        return {"model": {}, "extra": {"dataset": {"class_names": names}}}

    assert checkpoint_class_names(stored(["cat", "dog"])) == ["cat", "dog"]
    for bad in ([], ["cat", 3], "cat", None, {"a": 1}):
        assert checkpoint_class_names(stored(bad)) is None, bad
    for state in ({"model": {}}, {"extra": None}, {"extra": {"dataset": ["cat"]}}, ["cat"]):
        assert checkpoint_class_names(state) is None, state
