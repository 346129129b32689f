"""An exponential moving average of the weights, the model a run evaluates and saves when it is on.

The weights SGD ends on are one noisy point of a trajectory; their running average over the last
iterations is often a better model for the same compute (Polyak & Juditsky 1992; Tarvainen & Valpola
2017; the EMA that YOLOv5 / ultralytics trains with by default):

    ema_t = d_t * ema_{t-1} + (1 - d_t) * weights_t,    d_t = min(decay, (1 + t) / (10 + t))

``t`` counts the updates so far. The ramp ``(1 + t) / (10 + t)`` is TensorFlow's
``ExponentialMovingAverage(num_updates=...)``: a model trained from scratch changes fastest in its
first steps, and a fixed decay of 0.99 would carry the random initialisation for hundreds of them.
Until the ramp reaches ``decay`` (0.99: after about 890 updates) the average spans about the last
ninth of the run (``1 - d_t ~ 9 / t``); from then on about ``1 / (1 - decay)`` iterations (0.99: ~100).

Buffers are averaged as well (BatchNorm's running statistics, like timm's ``ModelEmaV2``), so the
averaged model's normalisation matches its averaged weights; integer buffers (BatchNorm's step
count) are copied. The averaging itself is ``torch.optim.swa_utils.AveragedModel``; only the ramp,
which torch's ``get_ema_multi_avg_fn`` does not have, is written here.

Shape shorthand: none -- every tensor is averaged elementwise with its twin of the same shape.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["build_weight_average", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay applied after ``updates`` earlier updates: ``decay``, ramped in over the first steps."""
    return min(float(decay), (1.0 + updates) / (10.0 + updates))


def build_weight_average(model: nn.Module, *, decay: float) -> AveragedModel:
    """An :class:`~torch.optim.swa_utils.AveragedModel` of ``model`` (a copy, on its device) with the ramped EMA.

    Call ``average.update_parameters(model)`` after every optimizer step; ``average.module`` is the
    averaged model (evaluate it in ``eval()`` mode), ``average.n_averaged`` the number of updates.
    The first update copies the weights (``AveragedModel``'s rule), the later ones average.
    """
    if not 0.0 < float(decay) < 1.0:
        raise ValueError(f"solver.ema_decay must be in (0, 1), or 0 for no average; got {decay}")

    @torch.no_grad()
    def ema_update(averaged: list[Tensor], current: list[Tensor], n_averaged: Tensor | int) -> None:
        # AveragedModel groups the tensors by device and dtype, and calls this from its second update on.
        if not torch.is_floating_point(averaged[0]):
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)  # integer buffers (BatchNorm's num_batches_tracked) are counts, not weights
            return
        # The count from AveragedModel's own buffer, on the CPU: reading the device copy it hands over
        # (n_averaged) would wait for a GPU every step.
        weight = 1.0 - ema_decay_at(decay, int(average.n_averaged))
        torch._foreach_lerp_(averaged, current, weight)  # what torch's get_ema_multi_avg_fn does, one kernel per group

    average = AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)
    average.eval()
    return average
