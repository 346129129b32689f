"""Exact resume: a run stopped at a checkpoint and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from conftest import ROOT, TINY_MODEL, compose_config
from detector.data.sampler import PositionedDataset, TrainingSampler

DATA = ["dataset.train.num_images=5", "dataset.val.num_images=2", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]


def test_positions_are_a_function_of_seed_and_position():
    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return i

    ds = PositionedDataset(Items(), seed=3)
    stream = [ds[p] for p in range(15)]
    assert sorted(stream[:5]) == sorted(stream[5:10]) == list(range(5)) and stream[:5] != stream[5:10]
    assert [PositionedDataset(Items(), seed=3)[p] for p in range(7, 15)] == stream[7:]  # start anywhere
    it = iter(TrainingSampler(start=8, rank=1, world_size=2))
    assert [next(it) for _ in range(3)] == [9, 11, 13]


def _train(tmp_path, out, overrides, steps=None):
    """One in-process run; ``steps`` (a list) receives the iteration of every training step it executes."""
    from detector.cli import train

    import detector.engine.trainer as trainer

    real_step = trainer.train_step

    def counted(*args, **kwargs):
        steps.append(kwargs["iteration"])
        return real_step(*args, **kwargs)

    cfg = compose_config("train", [f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, "solver.ims_per_batch=2",
                                   "solver.warmup_iters=2", "num_workers=0", "progress=false", "device=cpu", "seed=0",
                                   f"output_dir={out}", "eval_period=0", *overrides])
    trainer.train_step = counted if steps is not None else real_step
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train.train(cfg)
    finally:
        trainer.train_step = real_step
    return torch.load(out / "model_final.pth", weights_only=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_checkpoint_is_bit_identical(tmp_path, workers):
    full = _train(tmp_path, tmp_path / "full", ["solver.max_iter=6", "checkpoint_period=3", f"num_workers={workers}"])
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000003.pth", part / "model_0000003.pth")
    (part / "last_checkpoint").write_text("model_0000003.pth\n")
    steps = []
    resumed = _train(tmp_path, part, ["solver.max_iter=6", "checkpoint_period=3", "resume=true", f"num_workers={workers}"],
                     steps=steps)
    # A resume, not a restart: the process ran only the 3 remaining iterations (a run that starts
    # again from 0 with the same seed would end with the same weights).
    assert steps == [3, 4, 5]
    assert resumed["iteration"] == full["iteration"] == 6
    assert_same_state(full, resumed)


def test_resume_keeps_the_aspect_ratio_grouping_the_run_was_trained_with(tmp_path):
    full = _train(tmp_path, tmp_path / "full", ["solver.max_iter=6", "checkpoint_period=3", "aspect_ratio_grouping=false"])
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000003.pth", part / "model_0000003.pth")
    (part / "last_checkpoint").write_text("model_0000003.pth\n")
    resumed = _train(tmp_path, part, ["solver.max_iter=6", "checkpoint_period=3", "resume=true"])  # default: grouped
    assert_same_state(full, resumed)
    # The setting matters on this data (landscape and portrait images): a grouped run ends elsewhere.
    grouped = _train(tmp_path, tmp_path / "grouped", ["solver.max_iter=6", "checkpoint_period=3"])
    assert any(not torch.equal(v, grouped["model"][k]) for k, v in full["model"].items())


def assert_same_state(full: dict, resumed: dict) -> None:
    """Every tensor of the two checkpoints' model, optimizer and scaler state, and the RNG streams."""
    assert full["model"].keys() == resumed["model"].keys()
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert full["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for key, a in full["optimizer"]["state"].items():
        for name, value in a.items():
            assert torch.equal(value, resumed["optimizer"]["state"][key][name]), (key, name)
    assert full.get("grad_scaler") == resumed.get("grad_scaler")
    # _step_count counts this process's step() calls (torch reads it only for a call-order warning).
    drop = lambda d: {k: v for k, v in d.items() if k != "_step_count"}  # noqa: E731
    assert drop(full["scheduler"]) == drop(resumed["scheduler"])
    rng_full, rng_resumed = full["extra"]["rng_per_rank"], resumed["extra"]["rng_per_rank"]
    assert len(rng_full) == len(rng_resumed) and all(
        torch.equal(a["torch"], b["torch"]) for a, b in zip(rng_full, rng_resumed))


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path):
    """The real thing: a training process killed with SIGKILL, then resumed. Every run is a fresh
    process on one thread through the same command: the order of floating-point sums depends on the
    thread count, and oneDNN's kernels for a layout are chosen once per process, so a reference run in
    a process that trained before, on other threads, need not be bit-identical to a fresh one."""
    args = [f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, "solver.ims_per_batch=2", "solver.warmup_iters=2",
            "num_workers=0", "progress=false", "device=cpu", "seed=0", "solver.max_iter=24", "checkpoint_period=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    def train(*extra, stderr=subprocess.PIPE):
        return subprocess.Popen([sys.executable, str(ROOT / "tools" / "train.py"), *args, *extra], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)

    def finish(proc):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]

    finish(train(f"output_dir={tmp_path / 'full'}"))
    killed = tmp_path / "killed"
    proc = train(f"output_dir={killed}", stderr=subprocess.DEVNULL)
    # Kill once last_checkpoint names the iteration-8 checkpoint: the checkpoint file appears (renamed
    # into place) a moment before last_checkpoint is updated, and a kill in between rightly resumes
    # from the previous one.
    deadline, last = time.time() + 300, killed / "last_checkpoint"
    while time.time() < deadline and proc.poll() is None and not (
            last.exists() and last.read_text().strip() >= "model_0000008.pth"):
        time.sleep(0.01)
    assert proc.poll() is None, f"the run exited with {proc.returncode} before its iteration-8 checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists(), "the run finished before it was killed"
    finish(train(f"output_dir={killed}", "resume=true", "log_period=1"))
    # The resumed process logged only the iterations after its checkpoint (log_period=1: every one).
    log = (killed / "train.log").read_text()
    resumed_at = re.search(r"resumed from \S+model_(\d+)\.pth at iteration (\d+)", log)
    start = int(resumed_at.group(2))
    logged = [int(i) for i in re.findall(r"iter (\d+)/24 ", log[resumed_at.end():])]
    assert start >= 8 and logged == list(range(start + 1, 25))
    full = torch.load(tmp_path / "full" / "model_final.pth", weights_only=True)
    resumed = torch.load(killed / "model_final.pth", weights_only=True)
    assert_same_state(full, resumed)
