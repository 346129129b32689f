"""What a training run is at an iteration boundary, and the one place its checkpoint is written from.

:class:`TrainState` holds the model, the optimizer, the lr schedule, the float16 loss scaler and the
number of finished iterations. Its ``state_dict()`` is the checkpoint's training part, in the schema
:func:`detector.engine.checkpoint.save_checkpoint` writes (versioned by ``CHECKPOINT_FORMAT``); the
random number generators of every rank travel beside it (``extra["rng_per_rank"]``), gathered by the
caller because they live in each process.

On resume the weights, the momentum buffers, the loss scale and the iteration come back; the
hyperparameters (lr, momentum, weight decay) and the schedule stay those of *this* run's config, so a
resumed run may extend ``max_iter`` or change the lr: the schedule is rebuilt and fast-forwarded to
the checkpoint's iteration by the caller (:func:`detector.engine.solver.build_lr_scheduler`).

With a moving average of the weights (``average``, :mod:`detector.engine.ema`) the checkpoint's
``"model"`` is the *averaged* model -- the one the run evaluates, and what evaluation, inference,
export and fine-tuning read -- and ``"ema"`` holds what continues training: the weights SGD is at and
the number of updates averaged. Resuming such a checkpoint without an average continues from
those training weights; resuming one written without an average starts the average at the weights
it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["TrainState"]


@dataclass(eq=False)
class TrainState:
    """The training run's state; ``model`` is the plain module (never a DistributedDataParallel wrapper)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    scaler: torch.amp.GradScaler | None = None
    iteration: int = 0
    average: AveragedModel | None = None  # the EMA of the weights (solver.ema_decay > 0)

    @property
    def eval_model(self) -> nn.Module:
        """The model the run evaluates and saves as ``"model"``: the average when there is one."""
        return self.average.module if self.average is not None else self.model

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's training entries (tensors and plain types: ``weights_only`` loading reads them)."""
        entries = {
            "model": self.eval_model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iteration": int(self.iteration),
        }
        if self.average is not None:
            entries["ema"] = {"training_model": self.model.state_dict(), "updates": int(self.average.n_averaged)}
        return entries

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, momentum buffers, loss scale, iteration (see the module doc)."""
        ema = state.get("ema")
        self.model.load_state_dict(ema["training_model"] if ema else state["model"])
        if self.average is not None:
            self.average.module.load_state_dict(state["model"])
            self.average.n_averaged.fill_(int(ema["updates"]) if ema else 0)  # 0: the next update copies
        if self.optimizer is not None and state.get("optimizer"):
            fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            saved_groups = len(state["optimizer"].get("param_groups", ()))
            if saved_groups != len(fresh):
                raise ValueError(
                    f"the checkpoint's optimizer has {saved_groups} parameter groups and this run's {len(fresh)}"
                )
            self.optimizer.load_state_dict(state["optimizer"])  # momentum buffers
            for group, hyperparameters in zip(self.optimizer.param_groups, fresh):
                group.update(hyperparameters)  # lr, momentum, weight decay: from this run's config
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])  # the loss scale and its growth counter
        self.iteration = int(state["iteration"])
