"""Small helpers shared by the RoI operators."""

from __future__ import annotations

from typing import Union

from torch import Tensor

BoxesType = Union[Tensor, list[Tensor]]


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``k`` -> ``(k, k)``; ``(kh, kw)`` unchanged."""
    if isinstance(size, int):
        return (size, size)
    kh, kw = size
    return (int(kh), int(kw))
