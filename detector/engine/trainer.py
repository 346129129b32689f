"""The training loop: one explicit function, with a few hooks (checkpoint, evaluate, log).

No trainer class hierarchy to subclass: to change what happens every iteration, read this function
and pass a different hook (STYLE.md rule 7, after nanoGPT's train.py).

Per iteration: fetch a batch, run :func:`detector.engine.step.train_step` (forward, loss, backward,
clip, optimizer step; a non-finite loss stops the run or skips the step; optionally under bfloat16 or
float16 autocast), step the lr schedule.
Every ``log_period`` iterations the running-mean losses and the lr go to TensorBoard; the progress
bar shows the ETA and the running losses all the time.

SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption) do not kill a step half-way: the loop finishes
the current iteration, writes a checkpoint and raises :class:`TrainingInterrupted` (one line; exit
code 128 + the signal number, as a shell reports a signal).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

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


def train_loop(
    *,
    model: nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    max_iter: int,
    device: torch.device,
    start_iter: int = 0,
    clip_grad_norm: float = 0.0,
    log_period: int = 20,
    checkpoint_period: int = 0,
    eval_period: int = 0,
    save_checkpoint: Callable[[int], Any] | None = None,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    writer: Any = None,
    progress: bool = True,
    nonfinite: str = "stop",
    max_nonfinite_skips: int = 10,
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """Train ``model`` from ``start_iter`` to ``max_iter``.

    Args:
        save_checkpoint: called with the number of finished iterations every ``checkpoint_period``
            iterations, at the end, and when a signal stops the run; returns the file written.
        nonfinite: ``stop`` (a non-finite loss ends the run with one line naming the iteration, the
            loss terms and the last checkpoint) or ``skip`` (the step is dropped and counted; more
            than ``max_nonfinite_skips`` of them end the run).
        reduce: Averages logged numbers over data-parallel ranks (losses, and the stop flag of a
            signal, so that every rank stops at the same iteration).
        evaluate: called likewise every ``eval_period`` iterations (0 = only at the end); returns
            metrics, which are logged to TensorBoard under ``val/``.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or None).
        amp_dtype, scaler: mixed precision, passed to :func:`~detector.engine.step.train_step`
            (bfloat16 or float16 autocast; the GradScaler of a float16 run). ``save_checkpoint``
            should store the scaler's state for an exact resume.

    Returns:
        The running-mean losses over the last ``log_period`` iterations, plus the last metrics.
    """
    model.train()
    running: dict[str, list[float]] = defaultdict(list)
    summary: dict[str, float] = {}
    batches = _forever(data_loader)
    t0 = time.perf_counter()
    skipped = 0
    last_saved: Any = None
    bar = tqdm(total=max_iter, initial=start_iter, disable=not progress, desc="train", dynamic_ncols=True)
    with _StopSignals() as signals:
        for it in range(start_iter, max_iter):
            images, targets = next(batches)
            images, targets = _to_device(images, targets, device)
            lr = optimizer.param_groups[0]["lr"]  # the lr this iteration uses (logged below)
            try:
                # The signal flag rides along with the losses: one all-reduce, one decision for all ranks.
                flag = {"_signal": float(signals.received or 0)}
                values, applied = train_step(
                    model, images, targets, optimizer, iteration=it, clip_grad_norm=clip_grad_norm, nonfinite=nonfinite,
                    reduce=(lambda v: reduce({**v, **flag})) if reduce is not None else None,
                    amp_dtype=amp_dtype, scaler=scaler,
                )
                if values.pop("_signal", 0.0) > 0 and signals.received is None:
                    signals.received = signal.SIGTERM  # another rank was told to stop
            except NonFiniteError as e:
                raise NonFiniteError(f"{e}; last good checkpoint: {last_saved or 'none written yet'}") from None
            with warnings.catch_warnings():
                # A GradScaler that skips an overflowing fp16 step skips optimizer.step(), and torch
                # then warns that the schedule moved first; the schedule is meant to move (it counts
                # iterations, like the log), so that warning says nothing here.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                scheduler.step()
            done = it + 1
            if not applied:
                skipped += 1
                logger.warning("iteration %d: non-finite loss %s, step skipped (%d so far)", done,
                               {k: v for k, v in values.items() if not math.isfinite(v)}, skipped)
                if writer is not None:
                    writer.add_scalar("train/nonfinite_skips", skipped, done)
                if skipped > max_nonfinite_skips:
                    raise NonFiniteError(
                        f"iteration {done}: {skipped} non-finite steps skipped, more than "
                        f"solver.max_nonfinite_skips={max_nonfinite_skips}; last good checkpoint: {last_saved or 'none'}"
                    )
            else:
                for k, v in values.items():
                    running[k].append(v)
            if running and (done % log_period == 0 or done == max_iter):
                summary = {k: sum(v[-log_period:]) / len(v[-log_period:]) for k, v in running.items()}
                running = defaultdict(list, {k: v[-log_period:] for k, v in running.items()})
                if writer is not None:
                    for k, v in summary.items():
                        writer.add_scalar(f"train/{k}", v, done)
                    writer.add_scalar("train/lr", lr, done)
                elapsed = time.perf_counter() - t0
                eta = elapsed / (done - start_iter) * (max_iter - done)
                logger.info(
                    "iter %d/%d  lr %.5f  %s  (%.2f s/it, eta %s)", done, max_iter, lr,
                    "  ".join(f"{k} {v:.4f}" for k, v in summary.items()), elapsed / (done - start_iter), _fmt_seconds(eta),
                )
                bar.set_postfix(
                    {"loss": f"{summary['loss']:.3f}", "lr": f"{lr:.4f}"}
                    | {k.replace("loss_", ""): f"{v:.3f}" for k, v in summary.items() if k != "loss"}
                )
            bar.update(1)

            if signals.received is not None:
                bar.close()
                path = save_checkpoint(done) if save_checkpoint is not None else None
                name = signal.Signals(signals.received).name
                raise TrainingInterrupted(
                    f"{name} at iteration {done}/{max_iter}: "
                    + (f"checkpoint {path} written; resume=true continues the run" if path else "nothing saved"),
                    signals.received,
                )
            if save_checkpoint is not None and checkpoint_period > 0 and done % checkpoint_period == 0 and done != max_iter:
                last_saved = save_checkpoint(done)
            if evaluate is not None and eval_period > 0 and done % eval_period == 0 and done != max_iter:
                _log_metrics(evaluate(done), writer, done)
                model.train()
    bar.close()

    final = save_checkpoint(max_iter) if save_checkpoint is not None else None
    if evaluate is not None:
        try:
            with _StopSignals(immediate=True):
                metrics = evaluate(max_iter)
        except (_Stopped, KeyboardInterrupt) as stop:
            signum = stop.signum if isinstance(stop, _Stopped) else signal.SIGINT
            raise TrainingInterrupted(
                f"{signal.Signals(signum).name} during the final evaluation: training is complete"
                + (f" ({final} written); resume=true runs the evaluation" if final else ""),
                signum,
            ) from None
        summary.update(_log_metrics(metrics, writer, max_iter))
    return summary


def _fmt_seconds(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}"


def _log_metrics(metrics: dict[str, float], writer: Any, step: int) -> dict[str, float]:
    logger.info("eval at iter %d: %s", step, "  ".join(
        f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                writer.add_scalar(f"val/{k}", v, step)
        writer.flush()
    return metrics
