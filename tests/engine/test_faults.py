"""Surviving faults: non-finite losses and weights, signals, broken checkpoint folders and writes."""

from __future__ import annotations

import errno
import math
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from conftest import ROOT, TINY_MODEL, LogLines, compose_config, run_in_process
from detector.engine.hooks import Hook
from detector.engine.state import TrainState
from detector.engine import (
    NonFiniteError, PeriodicCheckpointer, StepOptions, build_lr_scheduler, find_last_checkpoint, load_checkpoint, remove_stale_temporaries,
    save_checkpoint, train_loop,
)
from detector.errors import CheckpointError, ConfigError
from detector.utils.io import atomic_write_text

DATA = ["dataset.train.num_images=4", "dataset.val.num_images=2", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]


def _cfg(tmp_path, out, overrides):
    return compose_config("train", [f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, "solver.ims_per_batch=2",
                                    "solver.warmup_iters=1", "num_workers=0", "progress=false", "device=cpu", "seed=0",
                                    f"output_dir={out}", *overrides])


def _train(tmp_path, out, overrides):
    from detector.cli import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train.train(_cfg(tmp_path, out, overrides))


class Flaky(torch.nn.Module):
    """A loss that is NaN on the given iterations (counted by calls)."""

    def __init__(self, bad):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.bad, self.calls = set(bad), 0

    def forward(self, images, targets):
        self.calls += 1
        return {"loss_roi_cls": self.w * (math.nan if self.calls in self.bad else 1.0)}


def _loop(model, max_iter, save=None, checkpoint_period=0, scaler=None, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=max_iter, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[])
    loader = [([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])]
    hooks = [PeriodicCheckpointer(period=checkpoint_period, save=save)] if save is not None else []
    state = TrainState(model=model, optimizer=opt, scheduler=sched, scaler=scaler)
    return train_loop(model=model, state=state, data_loader=loader,
                      max_iter=max_iter, device=torch.device("cpu"), options=StepOptions(**options), hooks=hooks)


def test_skip_policy_drops_counts_and_stops_after_the_limit():
    model = Flaky(bad={2, 4})
    _loop(model, 5, nonfinite="skip", max_nonfinite_skips=2)
    assert model.w.item() == pytest.approx(1 - 0.1 * 3)  # 3 of 5 steps applied, the NaN ones dropped
    with pytest.raises(NonFiniteError, match=r"^iteration 4: 2 non-finite steps skipped, more than solver\.max_nonfinite_skips=1; "
                                             r"last good checkpoint: none$"):
        _loop(Flaky(bad={2, 4}), 5, nonfinite="skip", max_nonfinite_skips=1)


def test_stop_names_the_last_good_checkpoint(tmp_path):
    saved = []

    def save(it):
        saved.append(tmp_path / f"model_{it}.pth")
        return saved[-1]

    with pytest.raises(NonFiniteError, match=r"iteration 3: loss_roi_cls=nan .*last good checkpoint: .*model_2\.pth"):
        _loop(Flaky(bad={3}), 5, save=save, checkpoint_period=2)


def test_a_diverging_run_never_leaves_a_poisoned_last_checkpoint(tmp_path):
    # The first step runs at lr 1e-3 (warmup from 1e-9 of 1e6) and writes model_0000001.pth; the
    # next ones at 1e5 and more diverge.
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError) as err:
        _train(tmp_path, out, ["solver.base_lr=1e6", "solver.warmup_iters=6", "solver.warmup_factor=1e-9",
                               "solver.clip_grad_norm=0", "checkpoint_period=1", "solver.max_iter=8"])
    assert "\n" not in str(err.value) and "iteration" in str(err.value)
    last = find_last_checkpoint(out)
    assert last is not None and f"last good checkpoint: {last}" in str(err.value)
    state = load_checkpoint(last)  # finite, so a resume can start from it
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_missing_last_checkpoint_falls_back_or_stops(tmp_path):
    model = torch.nn.Linear(2, 2)
    for it in (2, 4):
        save_checkpoint(tmp_path / f"model_{it:07d}.pth", TrainState(model=model, iteration=it))
    save_checkpoint(tmp_path / "model_final.pth", TrainState(model=model, iteration=8))
    (tmp_path / "last_checkpoint").write_text("model_0000006.pth\n")
    assert find_last_checkpoint(tmp_path, fallback=True).name == "model_final.pth"  # a run's last file sorts last
    (tmp_path / "model_final.pth").unlink()
    assert find_last_checkpoint(tmp_path, fallback=True).name == "model_0000004.pth"
    (tmp_path / "model_0000004.pth").write_bytes(b"truncated")
    assert find_last_checkpoint(tmp_path, fallback=True).name == "model_0000002.pth"
    (tmp_path / "model_0000002.pth").unlink()
    with pytest.raises(CheckpointError, match=r"names model_0000006\.pth, which is missing, and no other checkpoint"):
        find_last_checkpoint(tmp_path, fallback=True)


def test_resume_or_load_reads_the_marker_falls_back_and_never_resumes_a_new_run(tmp_path):
    from detector.engine.checkpoint import resume_or_load

    model = torch.nn.Linear(2, 2)
    for it in (2, 4):
        save_checkpoint(tmp_path / f"model_{it:07d}.pth", TrainState(model=model, iteration=it))
    assert resume_or_load(tmp_path, resume=False) == (None, None)  # resume=false never reads the folder
    for resume in (True, "auto"):
        path, state = resume_or_load(tmp_path, resume=resume)
        assert path.name == "model_0000004.pth" and state["iteration"] == 4
    (tmp_path / "model_0000004.pth").unlink()  # the marker now names a missing file: the newest complete one
    for resume in (True, "auto"):
        path, state = resume_or_load(tmp_path, resume=resume)
        assert path.name == "model_0000002.pth" and state["iteration"] == 2
    assert resume_or_load(tmp_path / "empty", resume="auto") == (None, None)
    with pytest.raises(ConfigError, match=r"^resume must be true, false or auto, got 'yes'$"):
        resume_or_load(tmp_path, resume="yes")


def test_resume_true_without_a_checkpoint_and_resume_auto(tmp_path):
    with pytest.raises(ConfigError, match="resume=true but .* has no checkpoint.*resume=auto"):
        _train(tmp_path, tmp_path / "a", ["resume=true", "solver.max_iter=1"])
    (tmp_path / "b").mkdir()
    stale = tmp_path / "b" / ".model_0000002.pth.x1y2.tmp"
    stale.write_bytes(b"half a checkpoint")
    _train(tmp_path, tmp_path / "b", ["resume=auto", "solver.max_iter=2"])  # starts; and cleans the leftover
    assert not stale.exists() and (tmp_path / "b" / "model_final.pth").is_file()
    assert remove_stale_temporaries(tmp_path / "nowhere") == []


def test_keep_last_prunes_only_after_the_new_checkpoint(tmp_path):
    _train(tmp_path, tmp_path / "k", ["solver.max_iter=5", "checkpoint_period=1", "checkpoint_keep_last=2"])
    names = sorted(p.name for p in (tmp_path / "k").glob("model_*.pth"))
    assert names == ["model_0000003.pth", "model_0000004.pth", "model_final.pth"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "model_0000001.pth", TrainState(model=model, iteration=1))
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write .*model_0000002\.pth: No space left on device"):
        save_checkpoint(tmp_path / "model_0000002.pth", TrainState(model=model, iteration=2))
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "model_0000003.pth", TrainState(model=model, iteration=3))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert find_last_checkpoint(tmp_path).name == "model_0000001.pth"
    assert load_checkpoint(tmp_path / "model_0000001.pth")["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_warmup_longer_than_the_run_warns(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        _train(tmp_path, tmp_path / "w", ["solver.max_iter=2", "solver.warmup_iters=5"])
    assert "solver.warmup_iters=5 >= solver.max_iter=2" in caplog.text


def _cli(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    return subprocess.Popen([sys.executable, str(ROOT / "tools" / "train.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_exits_128_plus_its_number(tmp_path, signum, code):
    out = tmp_path / "run"
    args = [f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, "solver.ims_per_batch=2", "num_workers=0",
            "progress=false", "device=cpu", "solver.max_iter=400", "checkpoint_period=0", "log_period=2", f"output_dir={out}"]
    proc = _cli(args)
    deadline = time.time() + 300
    # Stop waiting as soon as the child exits (a broken install fails in seconds, with its stderr).
    while time.time() < deadline and proc.poll() is None and not (out / "train.log").exists():
        time.sleep(0.1)
    while time.time() < deadline and proc.poll() is None and "iter 4/400" not in (out / "train.log").read_text():
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr[-2000:]
    lines = stderr.strip().splitlines()
    name = signal.Signals(signum).name
    assert len(lines) == 1 and lines[0].startswith(f"error: {name} at iteration ") and "resume=true continues" in lines[0]
    last = find_last_checkpoint(out)
    assert last is not None and 4 <= load_checkpoint(last)["iteration"] < 400


def test_keys_nobody_defines_are_refused(tmp_path, capsys):
    r = run_in_process("train", ["+solver.max_itr=5", f"output_dir={tmp_path / 'x'}"], tmp_path, capsys)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: +solver.max_itr=5: no config defines 'solver.max_itr', so nothing would read it; check the spelling "
        "(the keys are in configs/, e.g. python tools/train.py --cfg job)"]


class Climbing(torch.nn.Module):
    """A finite loss that grows 50 % a step after the tenth: what an lr too large does in the warmup."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, images, targets):
        self.calls += 1
        return {"loss": self.w * 0 + (1.0 if self.calls <= 10 else 1.5 ** (self.calls - 10))}


def test_the_divergence_guard_stops_a_climbing_loss_naming_the_lr_and_the_knob():
    from detector.engine import DivergedError, DivergenceGuard

    model = Climbing()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=50, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[])
    loader = [([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])]
    state = TrainState(model=model, optimizer=opt, scheduler=sched)
    with pytest.raises(DivergedError) as err:
        train_loop(model=model, state=state, data_loader=loader, max_iter=50, device=torch.device("cpu"),
                   hooks=[DivergenceGuard(factor=10, window=10)])
    # Reference 1.0 (ten steps at 1.0); the mean of the last ten first passes 10 at step 19:
    # (1 + 1.5 + ... + 1.5^9) / 10 = 11.3, while at step 18 (1 + 1 + 1.5 + ... + 1.5^8) / 10 = 7.6.
    assert "iteration 19:" in str(err.value) and "to 11.3" in str(err.value)
    assert "lower solver.base_lr (e.g. solver.base_lr=0.025)" in str(err.value)
    assert "\n" not in str(err.value) and "lr 0.1" in str(err.value)
    # factor=0 turns it off: the same climb runs to the end.
    quiet = Climbing()
    opt = torch.optim.SGD(quiet.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=30, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[])
    loop = train_loop(model=quiet, state=TrainState(model=quiet, optimizer=opt, scheduler=sched), data_loader=loader,
                      max_iter=30, device=torch.device("cpu"), hooks=[DivergenceGuard(factor=0)])
    assert loop.done == 30


def test_stop_signals_set_a_flag_and_a_second_ctrl_c_stops_at_once():
    from detector.engine.trainer import _Stopped, _StopSignals

    before = signal.getsignal(signal.SIGTERM)
    with _StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM (a scheduler repeating itself): still the flag
        assert signals.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after a stop was asked: stop now
    assert signal.getsignal(signal.SIGTERM) is before
    with _StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C only asks (the loop checkpoints, then exits 130)
        assert signals.received == signal.SIGINT
    with _StopSignals(immediate=True), pytest.raises(_Stopped) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.value.signum == signal.SIGTERM


class _SignalAt(Hook):
    """A hook that sends this process a signal after the given iteration (as a cluster or Ctrl-C would)."""

    def __init__(self, done, signum):
        self.done, self.signum = done, signum

    def after_step(self, loop):
        if loop.done == self.done:
            # The loop's handler must be in place (or the signal would end the test run itself).
            handler = signal.getsignal(self.signum)
            assert type(getattr(handler, "__self__", None)).__name__ == "_StopSignals", handler
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_process_finishes_the_next_step_saves_logs_and_stops(tmp_path, signum, code):
    from detector.engine import MetricLogger, TrainingInterrupted

    saved = []

    def save(it):
        saved.append(tmp_path / f"model_{it:07d}.pth")
        return saved[-1]

    model = Flaky(bad=set())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=10, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[])
    loader = [([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])]
    state = TrainState(model=model, optimizer=opt, scheduler=sched)
    # The signal arrives after iteration 2 (inside a hook): iteration 3 still runs, then the loop stops.
    hooks = [_SignalAt(2, signum), MetricLogger(period=1, progress=False), PeriodicCheckpointer(period=0, save=save)]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with LogLines("detector.engine.trainer") as lines, pytest.raises(TrainingInterrupted) as stop:
        train_loop(model=model, state=state, data_loader=loader, max_iter=10, device=torch.device("cpu"), hooks=hooks)
    name = signal.Signals(signum).name
    assert str(stop.value) == f"{name} at iteration 3/10: checkpoint {saved[-1]} written; resume=true continues the run"
    assert stop.value.exit_code == code and state.iteration == 3 and model.calls == 3
    assert saved == [tmp_path / "model_0000003.pth"]  # the stop's checkpoint, not a final one
    assert model.w.item() == pytest.approx(1 - 0.1 * 3)  # the third step was applied before stopping
    # The stopped iteration is logged like any other (on_stop replaces after_step there).
    assert [m.split("  ")[0] for m in lines.messages if m.startswith("iter ")] == ["iter 1/10", "iter 2/10", "iter 3/10"]
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the caller's handlers are back

    # Without a checkpointer the line says that nothing was saved.
    model = Flaky(bad=set())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_lr_scheduler(opt, max_iter=10, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[])
    with pytest.raises(TrainingInterrupted, match=rf"^{name} at iteration 2/10: nothing saved$"):
        train_loop(model=model, state=TrainState(model=model, optimizer=opt, scheduler=sched), data_loader=loader,
                   max_iter=10, device=torch.device("cpu"), hooks=[_SignalAt(1, signum)])


def test_the_divergence_guard_rules_step_by_step():
    """Its defaults (factor 10, window 10, until iteration 200 included) and what it ignores, on hand-fed losses."""
    from pathlib import Path
    from types import SimpleNamespace

    from detector.engine import DivergedError, DivergenceGuard

    state = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"initial_lr": 0.08, "lr": 0.02}]))

    def feed(guard, losses, start=1, applied=True, last=None):
        for done, loss in enumerate(losses, start):
            guard.after_step(SimpleNamespace(done=done, values={"loss": loss}, applied=applied, lr=0.02, state=state,
                                             last_checkpoint=last))

    guard = DivergenceGuard()
    feed(guard, [1.0] * 10)  # the reference: the mean of the first 10 steps
    feed(guard, [1e6], start=11, applied=False)  # a skipped (non-finite-policy) step is not a loss the run made
    # The last 10 steps' mean is (9 + 100) / 10 = 10.9 > 10 x 1.0: stop, naming the lr, its base and the checkpoint.
    with pytest.raises(DivergedError, match=r"^iteration 12: the loss grew from 1 \(mean of the first 10 steps\) to 10\.9, "
                                            r"more than 10x, at lr 0\.02; .*lower solver\.base_lr \(e\.g\. solver\.base_lr=0\.02\); "
                                            r"last checkpoint: ckpt\.pth$"):
        feed(guard, [100.0], start=12, last=Path("ckpt.pth"))
    # Iteration 200 is still watched, 201 no longer; no checkpoint yet: the line ends at the knob.
    guard = DivergenceGuard()
    feed(guard, [1.0] * 10)
    with pytest.raises(DivergedError, match=r"^iteration 200: .*\(e\.g\. solver\.base_lr=0\.02\)$"):
        feed(guard, [1000.0], start=200)
    # Exactly 10x is not more than 10x (reference 2: (9 x 2 + 182) / 10 = 20).
    guard = DivergenceGuard()
    feed(guard, [2.0] * 10)
    feed(guard, [182.0], start=11)
    with pytest.raises(DivergedError, match="^iteration 12: the loss grew from 2 .* to 38"):
        feed(guard, [182.0], start=12)
    guard = DivergenceGuard()
    feed(guard, [1.0] * 10)
    feed(guard, [1000.0] * 20, start=201)
    # No schedule (no initial_lr): the suggestion is a quarter of the lr in use.
    state = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"lr": 0.02}]))
    with pytest.raises(DivergedError, match=r"solver\.base_lr=0\.005\)$"):
        feed(DivergenceGuard(window=1), [1.0, 11.0])
    # A window of one: the reference is the first loss; factor 1: any rise stops.
    with pytest.raises(DivergedError, match="^iteration 2: the loss grew from 1 .* to 1.5, more than 1x"):
        feed(DivergenceGuard(factor=1, window=1), [1.0, 1.5])
    feed(DivergenceGuard(factor=0, window=1), [1.0, 1e9])  # 0: off
    feed(DivergenceGuard(window=1), [1.0, 9.9, 5.0])  # below 10x: runs on


def test_a_skipped_step_is_logged_with_its_non_finite_terms():
    with LogLines("detector.engine.trainer") as lines:
        _loop(Flaky(bad={2}), 3, nonfinite="skip")
    assert lines.messages == ["iteration 2: non-finite loss {'loss_roi_cls': nan, 'loss': nan}, step skipped (1 so far)"]


def test_the_step_options_reach_every_step_and_another_ranks_stop_is_everyones():
    """In one process, with a fake all-reduce: autocast and the reduce the options name are used at each
    step, and a stop flag that comes back from the reduce (another rank got SIGTERM) stops this rank too."""
    from detector.engine import TrainingInterrupted

    class Recording(Flaky):
        def forward(self, images, targets):
            self.seen = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
            return super().forward(images, targets)

    sent = []

    def reduce(values):  # the mean over 16 ranks if one got SIGTERM (15) during this rank's step 3
        sent.append(dict(values))
        return {**values, "loss": values["loss"] / 2, "_signal": 15.0 / 16 if len(sent) == 3 else values["_signal"]}

    model = Recording(bad=set())
    with pytest.raises(TrainingInterrupted, match=r"^SIGTERM at iteration 3/6: checkpoint .*model_3 written") as stop:
        _loop(model, 6, save=lambda it: f"model_{it}", checkpoint_period=0, amp_dtype=torch.bfloat16, reduce=reduce)
    assert stop.value.exit_code == 143 and model.calls == 3
    assert model.seen == (True, torch.bfloat16)
    assert [v["_signal"] for v in sent] == [0.0, 0.0, 0.0] and all("loss_roi_cls" in v for v in sent)
    # The flag is not a loss: it is taken out before the hooks see the values.
    loop = _loop(Recording(bad=set()), 2, reduce=lambda v: {**v, "loss": 0.5})
    assert sorted(loop.values) == ["loss", "loss_roi_cls"] and loop.values["loss"] == 0.5


class _OnFinalEvaluation(Hook):
    """An evaluation hook interrupted during the final evaluation: by a signal, or by a KeyboardInterrupt raised in it."""

    def __init__(self, signum=None):
        self.signum = signum

    def after_train(self, loop):
        if self.signum is None:
            raise KeyboardInterrupt
        os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (None, 130)])
def test_a_stop_during_the_final_evaluation_says_training_is_complete(tmp_path, signum, code):
    from pathlib import Path

    from detector.engine import TrainingInterrupted

    name = "SIGINT" if signum is None else signal.Signals(signum).name
    final = PeriodicCheckpointer(period=2, save=lambda it: Path(f"model_{'final' if it == 3 else it}.pth"))
    model = Flaky(bad=set())

    def run(hooks):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = build_lr_scheduler(opt, max_iter=3, warmup_iters=0, warmup_factor=1.0, schedule="step", steps=[])
        loader = [([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])]
        with pytest.raises(TrainingInterrupted) as stop:
            train_loop(model=model, state=TrainState(model=model, optimizer=opt, scheduler=sched), data_loader=loader,
                       max_iter=3, device=torch.device("cpu"), hooks=hooks)
        assert stop.value.exit_code == code
        return str(stop.value)

    # The final checkpoint is written, then the evaluation is interrupted.
    assert run([final, _OnFinalEvaluation(signum)]) == (f"{name} during the final evaluation: training is complete "
                                                       f"(model_final.pth written); resume=true runs the evaluation")
    # Interrupted before the final checkpoint (only a periodic one exists), or with no checkpointer at all.
    assert run([_OnFinalEvaluation(signum), final]) == f"{name} during the final evaluation: training is complete"
    assert run([_OnFinalEvaluation(signum)]) == f"{name} during the final evaluation: training is complete"


def test_a_float16_step_the_scaler_skips_moves_the_schedule_without_a_warning():
    class Huge(Flaky):
        def forward(self, images, targets):  # finite, but 1e35 x the scale (65536, then 32768) overflows float32
            return {"loss_roi_cls": self.w * 1e35}

    model = Huge(bad=set())
    scaler = torch.amp.GradScaler("cpu")
    with warnings.catch_warnings(record=True) as caught, LogLines("detector.engine.step", "DEBUG") as lines:
        warnings.simplefilter("always")
        loop = _loop(model, 2, scaler=scaler, amp_dtype=torch.float16)
    assert lines.messages == [  # at debug level: how float16 finds its scale, not a fault
        f"iteration {i}: float16 gradients overflowed at scale {a}; the GradScaler skipped the update and lowered the "
        f"scale to {b}" for i, a, b in ((1, 65536, 32768), (2, 32768, 16384))]
    assert loop.done == 2 and model.w.item() == 1.0  # both updates skipped by the scaler, the iterations counted
    assert scaler.get_scale() == 65536 / 4
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


def test_the_marker_is_authoritative_and_the_fallback_orders_by_iteration(tmp_path):
    model = torch.nn.Linear(2, 2)
    for it in (2, 9_999_999, 10_000_000):
        save_checkpoint(tmp_path / f"model_{it:07d}.pth", TrainState(model=model, iteration=it))
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth\n")  # an older one, on purpose: it wins
    for fallback in (False, True):
        assert find_last_checkpoint(tmp_path, fallback=fallback).name == "model_0000002.pth"
    (tmp_path / "last_checkpoint").write_text("model_0000006.pth\n")  # missing
    assert find_last_checkpoint(tmp_path) is None  # without fallback, by default: a missing file is none
    with LogLines("detector.engine.checkpoint", "WARNING") as lines:
        assert find_last_checkpoint(tmp_path, fallback=True).name == "model_10000000.pth"  # not by name
    assert lines.messages == [f"{tmp_path / 'last_checkpoint'} names model_0000006.pth, which is missing: resuming from "
                              f"model_10000000.pth, the newest complete checkpoint"]
