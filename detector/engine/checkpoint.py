"""Checkpoints: model, optimizer, scheduler, iteration and the resolved config, written atomically.

A checkpoint is self-describing: ``tools/eval.py`` rebuilds the model (pooler included) from the
``config`` stored inside it, so comparing RoIPool with RoIAlign needs only the checkpoint files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from detector.errors import CheckpointError
from detector.utils.io import atomic_torch_save, atomic_write_text


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    iteration: int,
    config: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically, and point ``last_checkpoint`` in the same folder at it."""
    path = Path(path)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "iteration": int(iteration),
        "config": config,
        "extra": extra or {},
    }
    atomic_torch_save(state, path)
    atomic_write_text(path.parent / "last_checkpoint", path.name + "\n")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; one clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # weights_only=False: the file holds the optimizer state and a plain-dict config; only load
        # checkpoints you trust (as with any pickle).
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {e.__class__.__name__}: {e}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a detector checkpoint (no 'model' entry)")
    return state


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint named in ``output_dir/last_checkpoint``, if any."""
    marker = Path(output_dir) / "last_checkpoint"
    if not marker.is_file():
        return None
    path = Path(output_dir) / marker.read_text().strip()
    return path if path.is_file() else None
