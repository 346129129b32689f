"""Seeding and device selection."""

from __future__ import annotations

import random

import numpy as np
import torch

from detector.errors import ConfigError


def seed_all(seed: int) -> None:
    """Seed Python, NumPy (data augmentation) and torch (init, sampling, shuffling)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device name (use auto, cpu, cuda, cuda:0)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available here; use device=cpu")
    return device
