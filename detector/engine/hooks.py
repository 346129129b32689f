"""What happens around the training step: small objects the loop calls, each one concern.

    hooks = [MetricLogger(period=20, writer=tb), PeriodicCheckpointer(period=500, save=save),
             PeriodicEvaluator(period=0, evaluate=evaluate, writer=tb)]
    train_loop(model=model, state=state, data_loader=loader, max_iter=1500, device=device, hooks=hooks)

detectron2's ``HookBase`` idea without its trainer class: a hook sees the loop's :class:`LoopInfo`
after every step (``after_step``), when a signal stops the run (``on_stop``: the checkpointer writes
and says where), and once after the last step (``after_train``: the final checkpoint, then the final
evaluation, in the order the hooks are given). The loop itself keeps only the step, the schedule and
the decision to stop (signals and non-finite losses), so it reads top to bottom.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from detector.engine.state import TrainState
from detector.errors import DetectorError

__all__ = [
    "AverageWeights", "DivergedError", "DivergenceGuard", "Hook", "LoopInfo",
    "MetricLogger", "PeriodicCheckpointer", "PeriodicEvaluator", "log_metrics",
]

logger = logging.getLogger("detector.engine.trainer")  # one logger name for the loop's lines


@dataclass
class LoopInfo:
    """What the loop knows after a step; hooks read it (and the checkpointer sets ``last_checkpoint``)."""

    state: TrainState
    max_iter: int
    start_iter: int
    done: int = 0                                   # finished iterations (the state's iteration)
    lr: float = 0.0                                 # the lr the last step used
    values: dict[str, float] = field(default_factory=dict)  # its losses (reduced over ranks)
    applied: bool = True                            # False: a non-finite step was skipped
    skipped: int = 0                                # non-finite steps skipped so far
    last_checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation's

    @property
    def final(self) -> bool:
        return self.done == self.max_iter


class Hook:
    """Override what you need; every method does nothing by default."""

    def after_step(self, loop: LoopInfo) -> None:
        pass

    def on_stop(self, loop: LoopInfo) -> Path | None:
        """A signal stops the run after ``loop.done`` iterations (instead of ``after_step``); return
        a file written, if any."""
        return None

    def after_train(self, loop: LoopInfo) -> None:
        pass

    def close(self) -> None:
        pass


class MetricLogger(Hook):
    """Running-mean losses every ``period`` iterations: a log line, TensorBoard scalars, the progress bar."""

    def __init__(self, *, period: int = 20, writer: Any = None, progress: bool = True) -> None:
        self.period, self.writer, self.progress = max(int(period), 1), writer, bool(progress)
        self.running: dict[str, list[float]] = defaultdict(list)
        self.summary: dict[str, float] = {}
        self._bar: tqdm | None = None
        self._t0 = 0.0

    def after_step(self, loop: LoopInfo) -> None:
        if self._bar is None:
            self._bar = tqdm(total=loop.max_iter, initial=loop.start_iter, disable=not self.progress, desc="train",
                             dynamic_ncols=True)
            self._t0 = time.perf_counter()
        done = loop.done
        if not loop.applied:
            if self.writer is not None:
                self.writer.add_scalar("train/nonfinite_skips", loop.skipped, done)
        else:
            for k, v in loop.values.items():
                self.running[k].append(v)
        if self.running and (done % self.period == 0 or loop.final):
            self.summary = {k: sum(v[-self.period:]) / len(v[-self.period:]) for k, v in self.running.items()}
            self.running = defaultdict(list, {k: v[-self.period:] for k, v in self.running.items()})
            if self.writer is not None:
                for k, v in self.summary.items():
                    self.writer.add_scalar(f"train/{k}", v, done)
                self.writer.add_scalar("train/lr", loop.lr, done)
            elapsed = time.perf_counter() - self._t0
            eta = elapsed / (done - loop.start_iter) * (loop.max_iter - done)
            logger.info(
                "iter %d/%d  lr %.5f  %s  (%.2f s/it, eta %s)", done, loop.max_iter, loop.lr,
                "  ".join(f"{k} {v:.4f}" for k, v in self.summary.items()), elapsed / (done - loop.start_iter),
                _fmt_seconds(eta),
            )
            self._bar.set_postfix(
                {"loss": f"{self.summary['loss']:.3f}", "lr": f"{loop.lr:.4f}"}
                | {k.replace("loss_", ""): f"{v:.3f}" for k, v in self.summary.items() if k != "loss"}
            )
        self._bar.update(1)

    def on_stop(self, loop: LoopInfo) -> None:
        self.after_step(loop)  # the stopped iteration is logged like any other
        return None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class AverageWeights(Hook):
    """After every step that moved the weights, ``state.average.update_parameters(state.model)``
    (:mod:`detector.engine.ema`). Give it before the checkpointer and the evaluator: they save and
    score the average.

    Not averaged: a skipped non-finite step (``loop.applied``), and a float16 step whose overflowing
    gradients the GradScaler dropped -- it lowers its scale exactly then, so ``scaler`` (the run's, if
    any) tells.
    """

    def __init__(self, *, scaler: Any = None) -> None:
        self.scaler = scaler
        self._scale = scaler.get_scale() if scaler is not None else None

    def after_step(self, loop: LoopInfo) -> None:
        stepped = loop.applied
        if self.scaler is not None and loop.applied:
            scale = self.scaler.get_scale()
            stepped, self._scale = scale >= self._scale, scale
        if stepped and loop.state.average is not None:
            loop.state.average.update_parameters(loop.state.model)

    def on_stop(self, loop: LoopInfo) -> None:
        self.after_step(loop)  # the stopped iteration's step was taken: average it before the checkpoint
        return None


class PeriodicCheckpointer(Hook):
    """``save(iteration) -> path`` every ``period`` iterations (0: only the final one), at the end, on a stop."""

    def __init__(self, *, period: int, save: Callable[[int], Path]) -> None:
        self.period, self.save = int(period), save

    def after_step(self, loop: LoopInfo) -> None:
        if self.period > 0 and loop.done % self.period == 0 and not loop.final:
            loop.last_checkpoint = self.save(loop.done)

    def on_stop(self, loop: LoopInfo) -> Path | None:
        loop.last_checkpoint = self.save(loop.done)
        return loop.last_checkpoint

    def after_train(self, loop: LoopInfo) -> None:
        loop.last_checkpoint = self.save(loop.max_iter)


class PeriodicEvaluator(Hook):
    """``evaluate(iteration) -> metrics`` every ``period`` iterations (0: only at the end), logged."""

    def __init__(self, *, period: int, evaluate: Callable[[int], dict[str, float]], writer: Any = None) -> None:
        self.period, self.evaluate, self.writer = int(period), evaluate, writer

    def after_step(self, loop: LoopInfo) -> None:
        if self.period > 0 and loop.done % self.period == 0 and not loop.final:
            loop.metrics = log_metrics(self.evaluate(loop.done), self.writer, loop.done)

    def after_train(self, loop: LoopInfo) -> None:
        loop.metrics = log_metrics(self.evaluate(loop.max_iter), self.writer, loop.max_iter)


class DivergedError(DetectorError):
    """The loss exploded early in the run (:class:`DivergenceGuard`)."""


class DivergenceGuard(Hook):
    """Stop a run whose loss explodes in its first iterations, with one line naming the lr to lower.

    A too-large lr shows within the warmup: the loss climbs instead of falling (on a user's data, the
    default lr at another width or batch has done this). Non-finite losses already stop the run
    (``solver.nonfinite``); this catches the finite climb earlier, while little time is lost. The
    reference is the mean total loss of the first ``window`` applied steps; afterwards, until
    ``until`` iterations, the mean of the last ``window`` steps above ``factor`` times it stops the run.
    ``factor=0`` turns the guard off.
    """

    def __init__(self, *, factor: float = 10.0, window: int = 10, until: int = 200, knob: str = "solver.base_lr") -> None:
        self.factor, self.window, self.until, self.knob = float(factor), max(int(window), 1), int(until), knob
        self._losses: list[float] = []
        self._reference: float | None = None

    def after_step(self, loop: LoopInfo) -> None:
        if self.factor <= 0 or loop.done > self.until or not loop.applied or "loss" not in loop.values:
            return
        self._losses.append(float(loop.values["loss"]))
        if self._reference is None:
            if len(self._losses) == self.window:
                self._reference = sum(self._losses) / self.window
            return
        recent = sum(self._losses[-self.window:]) / self.window
        if recent > self.factor * self._reference:
            base = loop.state.optimizer.param_groups[0].get("initial_lr", loop.lr)
            raise DivergedError(
                f"iteration {loop.done}: the loss grew from {self._reference:.3g} (mean of the first {self.window} steps) "
                f"to {recent:.3g}, more than {self.factor:g}x, at lr {loop.lr:.3g}; the lr is too large for this "
                f"model and data: lower {self.knob} (e.g. {self.knob}={base / 4:.3g}"
                f"){'' if loop.last_checkpoint is None else f'; last checkpoint: {loop.last_checkpoint}'}"
            )


def _fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def log_metrics(metrics: dict[str, float], writer: Any, step: int) -> dict[str, float]:
    """One log line of the metrics, and their TensorBoard scalars under ``val/``."""
    logger.info("eval at iter %d: %s", step, "  ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(f"val/{k}", v, step)
        writer.flush()
    return metrics
