"""Optimizer and learning-rate schedule: SGD with momentum, linear warmup, then step or cosine decay.

Warmup (Goyal et al. 2017, "Accurate, Large Minibatch SGD") ramps the learning rate linearly from
``warmup_factor * base_lr`` over the first iterations, which keeps a from-scratch network with fresh
heads from diverging on its first, badly-scaled gradients. The schedule is iteration-based (as in
detectron2), so ``max_iter`` alone sets the length of a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

_NORM_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def scaled_lr(
    *,
    reference_lr: float,
    ims_per_batch: int,
    reference_batch: int,
    width: float = 1.0,
    reference_width: float = 1.0,
    width_exponent: float = 0.0,
    max_width_factor: float = math.inf,
    max_batch_factor: float = math.inf,
    min_width_factor: float = 0.0,
) -> float:
    """The learning rate of a recipe stated at a reference batch size and model width.

    ``lr = reference_lr * min(ims_per_batch / reference_batch, max_batch_factor)
    * clamp((reference_width / width) ** width_exponent, min_width_factor, max_width_factor)``

    The batch factor is the linear scaling rule (Goyal et al. 2017): k times the images per step,
    k times the step. The width factor is a hypothesis the ablation (README "Defaults",
    benchmarks/) tested for this from-scratch VGG16-BN with three seeds: a wider network wants a
    smaller lr (``width_exponent = 1`` gained on both parts at width 0.25, where the weaker power
    0.5 lost on one machine), so ``configs/solver/sgd.yaml`` sets 1; 0 turns the width term
    off (the function's default). ``max_width_factor`` caps the width term: a narrower network than the reference
    would otherwise get a larger lr, which lost at width 0.0625 (the config sets 1: never above
    the reference's lr). ``max_batch_factor`` caps the batch term the same way: a batch larger
    than the reference's would get a proportionally larger lr, which lost at batch 8 (the config
    sets 1; below the reference the batch term stays linear, which won at batch 2).
    ``min_width_factor`` is the width term's floor (0, the default: none). Raises ValueError on
    non-positive inputs and on a floor above the cap.
    """
    for name, value in (("reference_lr", reference_lr), ("ims_per_batch", ims_per_batch),
                        ("reference_batch", reference_batch), ("width", width),
                        ("reference_width", reference_width), ("max_width_factor", max_width_factor),
                        ("max_batch_factor", max_batch_factor)):  # fmt: skip
        if not value > 0:
            raise ValueError(f"scaled_lr: {name} must be > 0, got {value!r}")
    for name, value in (("reference_lr", reference_lr), ("width", width), ("reference_width", reference_width),
                        ("width_exponent", width_exponent)):  # the caps may be inf (none); these may not
        if not math.isfinite(value):
            raise ValueError(f"scaled_lr: {name} must be finite, got {value!r}")
    if not 0 <= min_width_factor <= max_width_factor:
        raise ValueError(f"scaled_lr: min_width_factor must be >= 0 and <= max_width_factor ({max_width_factor!r}), "
                         f"got {min_width_factor!r}")
    batch_factor = min(ims_per_batch / reference_batch, max_batch_factor)
    width_factor = min(max((reference_width / width) ** width_exponent, min_width_factor), max_width_factor)
    return float(reference_lr * batch_factor * width_factor)


def build_optimizer(
    model: nn.Module,
    *,
    base_lr: float,
    momentum: float,
    weight_decay: float,
    backbone_lr_factor: float = 1.0,
) -> torch.optim.SGD:
    """SGD over the trainable parameters; no weight decay on normalisation layers and biases.

    Decaying BatchNorm scales and biases only shrinks them towards zero without regularising the
    function (detectron2's WEIGHT_DECAY_NORM = 0 default, and "Bag of Tricks", He et al. 2019).

    ``backbone_lr_factor`` != 1 gives the parameters of ``model.backbone`` the lr
    ``base_lr * backbone_lr_factor`` (two more groups, after the heads' two). The hypothesis it
    serves: a convolution followed by BatchNorm is invariant to the scale of its weights, so its
    effective step does not grow with the layer's fan-in, while the heads' linear layers (fc6 reads
    ``channels x 7 x 7`` inputs) take steps that grow with the backbone's width. Measured
    (docs/defaults.md): the backbone at the reference's lr and the heads at 1 / width lost 3.6 AP on
    a tuning dataset at width 0.25, so the config keeps 1 -- the backbone's lr falls with the width
    too. At 1 the optimizer has the two groups of every earlier checkpoint.
    """
    if not backbone_lr_factor > 0:
        raise ValueError(f"build_optimizer: backbone_lr_factor must be > 0, got {backbone_lr_factor!r}")
    split = backbone_lr_factor != 1.0 and isinstance(getattr(model, "backbone", None), nn.Module)
    in_backbone = {id(p) for p in model.backbone.parameters()} if split else set()
    decay, no_decay, bb_decay, bb_no_decay = [], [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            no_wd = isinstance(module, _NORM_TYPES) or name == "bias"
            if id(p) in in_backbone:
                (bb_no_decay if no_wd else bb_decay).append(p)
            else:
                (no_decay if no_wd else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if split:
        lr = base_lr * backbone_lr_factor
        groups += [{"params": bb_decay, "weight_decay": weight_decay, "lr": lr},
                   {"params": bb_no_decay, "weight_decay": 0.0, "lr": lr}]  # fmt: skip
    return torch.optim.SGD(groups, lr=base_lr, momentum=momentum)


class WarmupSchedule:
    """Learning-rate multiplier as a function of the iteration (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def __init__(
        self,
        *,
        max_iter: int,
        warmup_iters: int,
        warmup_factor: float,
        schedule: str = "cosine",
        steps: Sequence[int] = (),
        gamma: float = 0.1,
    ) -> None:
        if schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {schedule!r}")
        self.max_iter = int(max_iter)
        self.warmup_iters = int(warmup_iters)
        self.warmup_factor = float(warmup_factor)
        self.schedule = schedule
        self.steps = tuple(sorted(int(s) for s in steps))
        self.gamma = float(gamma)

    def __call__(self, it: int) -> float:
        if self.schedule == "step":
            factor = self.gamma ** sum(it >= s for s in self.steps)
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * min(it, self.max_iter) / max(self.max_iter, 1)))
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, *, start_iter: int = 0, **schedule_kwargs
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` driven by a :class:`WarmupSchedule`; stepped once per iteration.

    The optimizer's current ``lr`` values are the base learning rates. ``start_iter`` > 0 (a resumed
    run) fast-forwards the schedule: the lr is set to its value at that iteration.
    """
    schedule = WarmupSchedule(**schedule_kwargs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if start_iter > 0:
        scheduler.last_epoch = start_iter
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(start_iter)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    return scheduler
