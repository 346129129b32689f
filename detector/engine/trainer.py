"""The training loop: one explicit function, with a few hooks (checkpoint, evaluate, log).

No trainer class hierarchy to subclass: to change what happens every iteration, read this function
and pass a different hook (STYLE.md rule 7, after nanoGPT's train.py).

Per iteration: fetch a batch, forward in training mode (the model returns its loss dict), sum the
losses, backward, optionally clip the gradient norm, step the optimizer and the lr schedule. Every
``log_period`` iterations the running-mean losses and the lr go to TensorBoard; the progress bar
shows the ETA and the running losses all the time.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)


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
    save_checkpoint: Callable[[int], None] | None = None,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    writer: Any = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``model`` from ``start_iter`` to ``max_iter``.

    Args:
        save_checkpoint: called with the number of finished iterations every ``checkpoint_period``
            iterations and at the end.
        evaluate: called likewise every ``eval_period`` iterations (0 = only at the end); returns
            metrics, which are logged to TensorBoard under ``val/``.
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or None).

    Returns:
        The running-mean losses over the last ``log_period`` iterations, plus the last metrics.
    """
    model.train()
    running: dict[str, list[float]] = defaultdict(list)
    summary: dict[str, float] = {}
    batches = _forever(data_loader)
    t0 = time.perf_counter()
    bar = tqdm(total=max_iter, initial=start_iter, disable=not progress, desc="train", dynamic_ncols=True)
    for it in range(start_iter, max_iter):
        images, targets = next(batches)
        images, targets = _to_device(images, targets, device)
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        # One host transfer for all the numbers we log (each .item() would be a device sync on GPU).
        values = dict(zip([*loss_dict, "loss"], torch.stack([*loss_dict.values(), loss]).detach().tolist()))
        if not math.isfinite(values["loss"]):
            shown = {k: round(v, 4) for k, v in values.items() if k != "loss"}
            raise FloatingPointError(
                f"loss became {values['loss']} at iteration {it} ({shown}); lower solver.base_lr or "
                f"raise solver.warmup_iters"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the lr this iteration used (logged below)
        scheduler.step()

        for k, v in values.items():
            running[k].append(v)
        done = it + 1
        if done % log_period == 0 or done == max_iter:
            summary = {k: sum(v[-log_period:]) / len(v[-log_period:]) for k, v in running.items()}
            running = defaultdict(list, {k: v[-log_period:] for k, v in running.items()})
            if writer is not None:
                for k, v in summary.items():
                    writer.add_scalar(f"train/{k}", v, done)
                writer.add_scalar("train/lr", lr, done)
            elapsed = time.perf_counter() - t0
            eta = elapsed / (done - start_iter) * (max_iter - done)
            logger.info(
                "iter %d/%d  lr %.5f  %s  (%.2f s/it, eta %s)", done, max_iter, lr, "  ".join(f"{k} {v:.4f}" for k, v in summary.items()),
                elapsed / (done - start_iter), _fmt_seconds(eta),
            )
            bar.set_postfix(
                {"loss": f"{summary['loss']:.3f}", "lr": f"{lr:.4f}"}
                | {k.replace("loss_", ""): f"{v:.3f}" for k, v in summary.items() if k != "loss"}
            )
        bar.update(1)

        if save_checkpoint is not None and checkpoint_period > 0 and done % checkpoint_period == 0 and done != max_iter:
            save_checkpoint(done)
        if evaluate is not None and eval_period > 0 and done % eval_period == 0 and done != max_iter:
            _log_metrics(evaluate(done), writer, done)
            model.train()
    bar.close()

    if save_checkpoint is not None:
        save_checkpoint(max_iter)
    if evaluate is not None:
        metrics = _log_metrics(evaluate(max_iter), writer, max_iter)
        summary.update(metrics)
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
