"""The training loop: one explicit function; what happens around the step is hooks (``hooks.py``).

No trainer class hierarchy to subclass: to change what happens every iteration, read this function
and pass a different hook (after nanoGPT's train.py and detectron2's hooks).

Per iteration: fetch a batch, run :func:`detector.engine.step.train_step` (forward, loss, backward,
clip, optimizer step; a non-finite loss stops the run or skips the step; optionally under bfloat16 or
float16 autocast), step the lr schedule, then every hook's ``after_step`` (logging, periodic
checkpoints and evaluations). After the last step, every hook's ``after_train`` (the final checkpoint,
then the final evaluation).

SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) do not kill a step half-way: the loop finishes
the current iteration, writes a checkpoint and raises :class:`TrainingInterrupted` (one line; exit
code 128 + the signal number, as a shell reports a signal).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from detector.engine.hooks import Hook, LoopInfo
from detector.engine.state import TrainState
from detector.engine.step import NonFiniteError, train_step
from detector.errors import DetectorError

logger = logging.getLogger(__name__)


class TrainingInterrupted(DetectorError):
    """SIGINT / SIGTERM: the run stopped after a checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _Stopped(BaseException):
    """Raised by a signal during the final evaluation (a BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """Turn SIGINT / SIGTERM into a flag the loop checks between iterations (main thread only).

    ``immediate=True`` (the final evaluation, which has no iteration boundary to stop at and nothing
    left to save) raises :class:`_Stopped` at once instead.
    """

    def __init__(self, *, immediate: bool = False) -> None:
        self.received: int | None = None
        self.immediate = immediate
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.immediate:
            raise _Stopped(signum)
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _forever(loader: Iterable) -> Iterator:
    """Iterate over the data loader epoch after epoch (the loop is iteration-based)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training data loader yields no batch (fewer images than the batch size?)")


def _to_device(images, targets, device):
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


@dataclass(frozen=True)
class StepOptions:
    """How each step runs (:func:`detector.engine.step.train_step`)."""

    clip_grad_norm: float = 0.0
    nonfinite: str = "stop"             # stop | skip (a non-finite loss)
    max_nonfinite_skips: int = 10       # skip: more of them than this end the run
    amp_dtype: torch.dtype | None = None  # bfloat16 / float16 autocast (state.scaler for float16)
    # Averages the logged numbers over data-parallel ranks (the losses, and the stop flag of a
    # signal, so that every rank stops at the same iteration); None in one process.
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None


def train_loop(
    *,
    model: nn.Module,
    state: TrainState,
    data_loader: Iterable,
    max_iter: int,
    device: torch.device,
    options: StepOptions = StepOptions(),
    hooks: Sequence[Hook] = (),
) -> LoopInfo:
    """Train from ``state.iteration`` to ``max_iter``; the hooks do the rest (see module doc).

    Args:
        model: the module to run, ``state.model`` or its DistributedDataParallel wrapper.
        state: optimizer, schedule, scaler and iteration; updated in place.

    Returns:
        The loop's :class:`~detector.engine.hooks.LoopInfo` at the end (``metrics``: the final evaluation's).
    """
    model.train()
    loop = LoopInfo(state=state, max_iter=int(max_iter), start_iter=int(state.iteration))
    batches = _forever(data_loader)
    try:
        with _StopSignals() as signals:
            for it in range(loop.start_iter, loop.max_iter):
                images, targets = _to_device(*next(batches), device)
                loop.lr = state.optimizer.param_groups[0]["lr"]  # the lr this iteration uses (logged)
                try:
                    # The signal flag rides along with the losses: one all-reduce, one decision for all ranks.
                    flag = {"_signal": float(signals.received or 0)}
                    loop.values, loop.applied = train_step(
                        model, images, targets, state.optimizer, iteration=it, clip_grad_norm=options.clip_grad_norm,
                        nonfinite=options.nonfinite, amp_dtype=options.amp_dtype, scaler=state.scaler,
                        reduce=(lambda v: options.reduce({**v, **flag})) if options.reduce is not None else None,
                    )
                    if loop.values.pop("_signal", 0.0) > 0 and signals.received is None:
                        signals.received = signal.SIGTERM  # another rank was told to stop
                except NonFiniteError as e:
                    raise NonFiniteError(f"{e}; last good checkpoint: {loop.last_checkpoint or 'none written yet'}") from None
                with warnings.catch_warnings():
                    # A GradScaler that skips an overflowing fp16 step skips optimizer.step(), and torch
                    # then warns that the schedule moved first; the schedule is meant to move (it counts
                    # iterations, like the log), so that warning says nothing here.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                    state.scheduler.step()
                loop.done = state.iteration = it + 1
                if not loop.applied:
                    loop.skipped += 1
                    logger.warning("iteration %d: non-finite loss %s, step skipped (%d so far)", loop.done,
                                   {k: v for k, v in loop.values.items() if not math.isfinite(v)}, loop.skipped)
                    if loop.skipped > options.max_nonfinite_skips:
                        raise NonFiniteError(
                            f"iteration {loop.done}: {loop.skipped} non-finite steps skipped, more than "
                            f"solver.max_nonfinite_skips={options.max_nonfinite_skips}; last good checkpoint: "
                            f"{loop.last_checkpoint or 'none'}"
                        )
                if signals.received is not None:
                    _stop(loop, hooks, signals.received)
                for hook in hooks:
                    hook.after_step(loop)
                model.train()  # an evaluation hook left the model in eval mode
    finally:
        for hook in hooks:
            hook.close()
    try:
        with _StopSignals(immediate=True):
            for hook in hooks:  # in order: the final checkpoint, then the final evaluation
                hook.after_train(loop)
    except (_Stopped, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, _Stopped) else signal.SIGINT
        final = loop.last_checkpoint if loop.last_checkpoint and loop.last_checkpoint.name == "model_final.pth" else None
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} during the final evaluation: training is complete"
            + (f" ({final} written); resume=true runs the evaluation" if final else ""),
            signum,
        ) from None
    return loop


def _stop(loop: LoopInfo, hooks: Sequence[Hook], signum: int) -> None:
    """A signal arrived: the step is finished; let the hooks log and save, then stop with one line."""
    written = [p for p in (hook.on_stop(loop) for hook in hooks) if p is not None]
    raise TrainingInterrupted(
        f"{signal.Signals(signum).name} at iteration {loop.done}/{loop.max_iter}: "
        + (f"checkpoint {written[-1]} written; resume=true continues the run" if written else "nothing saved"),
        signum,
    )
