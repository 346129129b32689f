"""Helpers shared by the RoI operators: argument normalisation and checks."""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

BoxesType = Union[Tensor, list[Tensor], tuple[Tensor, ...]]


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; ``(kh, kw)`` unchanged."""
    if isinstance(size, int):
        return (size, size)
    kh, kw = size
    return (int(kh), int(kw))


def boxes_to_rois(boxes: BoxesType, input: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """torchvision's two box formats -> one [K, 5] tensor (batch index, x1, y1, x2, y2).

    ``dtype`` defaults to the input's; the floor quantization asks for float64 so that a float16
    map does not round a coordinate across a cell border before it is floored.
    """
    dtype = dtype or input.dtype
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"each per-image boxes tensor must be [L, 4], got {list(b.shape)}")
        if len(boxes) == 0:
            return torch.zeros((0, 5), dtype=dtype, device=input.device)
        idx = torch.cat(
            [torch.full((len(b), 1), i, dtype=dtype, device=input.device) for i, b in enumerate(boxes)]
        )
        return torch.cat([idx, torch.cat([b.to(dtype) for b in boxes])], dim=1)
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be [K, 5] (batch index, x1, y1, x2, y2), got {list(boxes.shape)}")
    return boxes.to(dtype)


def check_roi_inputs(input: Tensor, rois: Tensor) -> None:
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got {list(input.shape)}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating-point tensor, got {input.dtype}")
    if rois.device != input.device:
        raise ValueError(f"boxes are on {rois.device} but input is on {input.device}")


def channels_last_empty(n: int, c: int, h: int, w: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised [n, c, h, w] tensor laid out channels-last ([n, h, w, c] in memory)."""
    return torch.empty((n, h, w, c), dtype=dtype, device=device).permute(0, 3, 1, 2)


def index_dtype(plane: int) -> torch.dtype:
    """The smallest integer type that holds a flat index into a plane (window, samples) of this many."""
    return torch.uint8 if plane <= 2**8 else torch.int16 if plane <= 2**15 else torch.int32


def round_half_away(x: Tensor) -> Tensor:
    """C's ``round`` (halves away from zero; ``torch.round`` rounds halves to even), exactly.

    ``floor(|x| + 0.5)`` is not: for the float just below 0.5 the sum rounds up to 1.0. The
    fractional part ``x - trunc(x)`` is exact in floating point, and so is twice it.
    """
    whole = torch.trunc(x)
    return whole + torch.trunc(2 * (x - whole))
