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


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 in hardware, and the reason in words (for the log line).

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later). CPU: the instructions PyTorch's
    oneDNN kernels use for bf16 convolutions and matmuls, AMX-BF16 or AVX512-BF16, as
    ``torch.cpu.get_capabilities()`` reports them; without them a bf16 kernel converts to float32
    and back around float32 arithmetic, slower than float32 alone.
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(device)} computes bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no fast bf16"
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        found = [name for key, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if caps.get(key)]
        cpu = caps.get("cpu_name") or "this CPU"
        if found:
            return True, f"{cpu} has {' and '.join(found)}"
        return False, f"{cpu} has neither AMX-BF16 nor AVX512-BF16 (bf16 would be emulated, slower than float32)"
    return False, f"{device.type} is not known to compute bf16 fast"


def rng_state() -> dict:
    """Every global random state a training run draws from, as tensors and plain types.

    torch (CPU and every CUDA device: the RPN's and RoI sampler's ``randperm``), NumPy and Python's
    ``random``: a checkpoint stores them so that a resumed run continues the same random stream
    (:func:`set_rng_state`). Plain types, so the checkpoint loads with ``weights_only=True``.
    """
    version, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"version": version, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["version"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value
