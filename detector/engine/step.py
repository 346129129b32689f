"""One training step, and what happens when its loss is not finite.

``train_step`` is the body of :func:`detector.engine.trainer.train_loop`'s iteration: forward in
training mode (the model returns its loss dict), sum, backward, clip the gradient norm, step the
optimizer.

Mixed precision (``amp_dtype``): the forward runs under ``torch.autocast`` on the images' device
(convolutions and linear layers in bfloat16 or float16, the parameters stay float32) and the loss
terms are summed in float32. float16 keeps 5 exponent bits, so small gradients underflow: its
backward goes through a ``torch.amp.GradScaler`` (scale the loss, backward, unscale the gradients
*before* clipping so ``clip_grad_norm`` is in true units, step, update the scale). A step whose
scaled gradients overflow is skipped by the scaler itself and the scale halves: that is how float16
training finds its scale, not a non-finite loss, so it is logged at debug level and not counted.
bfloat16 has float32's exponent range and needs no scaler. A non-finite loss never reaches the
optimizer: with ``nonfinite="stop"`` the run stops with one line naming the iteration (1-based, as
the log counts) and the loss terms that are not finite; with ``"skip"`` the step is dropped (no
update; the iteration still counts and the schedule moves on) and the caller counts it.

:func:`check_finite` looks at every parameter and buffer (BatchNorm statistics included) before a
checkpoint is written: a step that diverged without a non-finite loss (an enormous lr) must not
leave ``last_checkpoint`` naming poisoned weights that a resume would fail on again.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from detector.errors import DetectorError

__all__ = ["AMP_DTYPES", "AMP_MODES", "AmpChoice", "NONFINITE_POLICIES", "NonFiniteError", "check_finite", "resolve_amp", "train_step"]

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("stop", "skip")
# Mixed-precision modes by name (``solver.amp``); None = full float32.
AMP_DTYPES: dict[str, torch.dtype | None] = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_MODES = ("auto", *AMP_DTYPES)


class AmpChoice(NamedTuple):
    """What ``solver.amp`` means on a device: the autocast dtype (None = float32) and why, in words."""

    dtype: torch.dtype | None
    reason: str
    warn: bool  # the choice is the user's and slower than the alternative here


def resolve_amp(mode: str, device: torch.device, key: str = "solver.amp") -> AmpChoice:
    """The autocast dtype for ``solver.amp=mode`` on ``device``, and one line saying what and why.

    ``auto`` is bf16 where the device computes it in hardware (:func:`~detector.utils.env.fast_bf16`)
    and float32 elsewhere; bf16 keeps float32's exponent range, so it needs no loss scaling and
    changes no other setting. ``bf16`` on a device without fast bf16 runs (emulated, slower) and
    says so; ``fp16`` on a CPU runs through the GradScaler and says that it is meant for CUDA.
    ``key`` names the setting in those lines (the evaluation's ``amp`` follows the same rule).
    """
    from detector.utils.env import fast_bf16

    if mode not in AMP_MODES:
        raise ValueError(f"{key} must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    fast, why = fast_bf16(device)
    if mode == "auto":
        if fast:
            return AmpChoice(torch.bfloat16, f"{key}=auto: bf16 autocast on {device.type} ({why}); "
                                             f"{key}=off forces float32", False)
        return AmpChoice(None, f"{key}=auto: float32 on {device.type} ({why})", False)
    if mode == "bf16" and not fast:
        return AmpChoice(torch.bfloat16, f"{key}=bf16: {why}; it runs, but {key}=off (float32) is "
                                         f"faster here", True)
    if mode == "fp16" and device.type == "cpu":
        return AmpChoice(torch.float16, f"{key}=fp16 on the CPU: float16 autocast with a GradScaler, as on "
                                        "CUDA; CPU float16 kernels are slow, it is meant for CUDA (auto, bf16 or off "
                                        "are the CPU's choices)", True)
    dtype = AMP_DTYPES[mode]
    return AmpChoice(dtype, f"{key}={mode}: " + ("float32" if dtype is None else f"{mode} autocast on {device.type}"),
                     False)


class NonFiniteError(DetectorError):
    """The loss or the weights stopped being finite (the message names the iteration and the fix)."""


def train_step(
    model: nn.Module,
    images: list[torch.Tensor],
    targets: list[dict],
    optimizer: torch.optim.Optimizer,
    *,
    iteration: int,
    clip_grad_norm: float = 0.0,
    nonfinite: str = "stop",
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[dict[str, float], bool]:
    """Run one step; returns ``(losses as floats incl. "loss", whether the update was applied)``.

    Args:
        iteration: 0-based index of this step (messages say ``iteration + 1``).
        nonfinite: ``stop`` raises :class:`NonFiniteError`; ``skip`` returns without updating.
        reduce: Averages the numbers over data-parallel ranks before the finiteness test, so every
            rank takes the same decision (a rank that skipped a backward the others ran would hang
            their gradient all-reduce). The returned losses are the averaged ones.
        amp_dtype: ``torch.bfloat16`` or ``torch.float16`` runs the forward under autocast on the
            images' device; None (the default) runs it in float32.
        scaler: the ``torch.amp.GradScaler`` of a float16 run (None otherwise). An update it skips
            because the gradients overflowed still counts as applied (see the module docstring).
    """
    autocast = (
        torch.autocast(device_type=images[0].device.type, dtype=amp_dtype)
        if amp_dtype is not None else contextlib.nullcontext()
    )
    with autocast:
        loss_dict = model(images, targets)
    loss_dict = {k: v.float() for k, v in loss_dict.items()}  # the sum in float32, whatever the forward ran in
    loss = sum(loss_dict.values())
    # One host transfer for all the numbers we log (each .item() would be a device sync on GPU).
    values = dict(zip([*loss_dict, "loss"], torch.stack([*loss_dict.values(), loss]).detach().tolist()))
    if reduce is not None:
        values = reduce(values)
    optimizer.zero_grad(set_to_none=True)
    if not math.isfinite(values["loss"]):
        if nonfinite == "skip":
            return values, False
        bad = [f"{k}={v}" for k, v in values.items() if k != "loss" and not math.isfinite(v)]
        raise NonFiniteError(
            f"iteration {iteration + 1}: {', '.join(bad) or 'loss=' + str(values['loss'])} is not finite; "
            f"lower solver.base_lr, raise solver.warmup_iters, or set solver.nonfinite=skip"
        )
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # before clipping: clip_grad_norm is a norm of the true gradients
    if clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is None:
        optimizer.step()
        return values, True
    scale = scaler.get_scale()
    scaler.step(optimizer)  # skipped if the unscaled gradients hold an inf or a NaN
    scaler.update()
    if scaler.get_scale() < scale:
        logger.debug("iteration %d: float16 gradients overflowed at scale %g; the GradScaler skipped the "
                     "update and lowered the scale to %g", iteration + 1, scale, scaler.get_scale())
    return values, True


def check_finite(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers that hold a NaN or an infinity (empty: all finite)."""
    bad = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad
