"""Anchor generator for a single feature map (VGG16 has one output level).

Shape shorthand:
    A: anchors per location = len(sizes) * len(aspect_ratios)
    Hf, Wf: feature-map height and width

Faster R-CNN (section 3.1) places A reference boxes ("anchors") at every feature-map location, one per
(size, aspect ratio) pair; the RPN predicts an objectness and a box delta for each. Anchors are laid
out location-major, anchor-minor, i.e. index ``(y * Wf + x) * A + a``, which is the order produced by
flattening the head's ``[N, A*?, Hf, Wf]`` outputs after permuting to ``[N, Hf, Wf, A, ?]``.

Anchor centres sit at ``(x + offset) * stride``. ``offset=0.5`` puts them at the centre of the image
patch a cell covers (py-faster-rcnn's base anchor [0, 0, 15, 15] is centred at 7.5 for stride 16);
``offset=0.0`` reproduces torchvision's and detectron2's default (the cell's top-left corner).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Generates anchors [Hf*Wf*A, 4] (xyxy, input-image pixels) for a feature map of a given size."""

    def __init__(
        self,
        *,
        sizes: Sequence[float],
        aspect_ratios: Sequence[float],
        stride: int,
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        if not sizes or not aspect_ratios:
            raise ValueError("AnchorGenerator needs at least one size and one aspect ratio")
        if any(s <= 0 for s in sizes) or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"anchor sizes and aspect ratios must be positive: {sizes}, {aspect_ratios}")
        self.sizes = tuple(float(s) for s in sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.stride = int(stride)
        self.offset = float(offset)
        # Not a buffer of the state dict: it is a pure function of the config above.
        self.register_buffer("cell_anchors", self._cell_anchors(), persistent=False)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.aspect_ratios)

    def _cell_anchors(self) -> Tensor:
        """[A, 4] anchors centred at (0, 0): area size**2, height / width = aspect ratio."""
        anchors = []
        for size in self.sizes:
            for ratio in self.aspect_ratios:
                w = size / math.sqrt(ratio)
                h = size * math.sqrt(ratio)
                anchors.append((-w / 2, -h / 2, w / 2, h / 2))
        return torch.tensor(anchors, dtype=torch.float32)

    def forward(self, feature_size: tuple[int, int]) -> Tensor:
        """Anchors for a feature map of ``feature_size`` = (Hf, Wf) -> [Hf*Wf*A, 4]."""
        hf, wf = feature_size
        device = self.cell_anchors.device
        shift_x = (torch.arange(wf, dtype=torch.float32, device=device) + self.offset) * self.stride
        shift_y = (torch.arange(hf, dtype=torch.float32, device=device) + self.offset) * self.stride
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)  # [Hf*Wf, 1, 4]
        return (shifts + self.cell_anchors[None]).reshape(-1, 4)

    def extra_repr(self) -> str:
        return (
            f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, stride={self.stride}, "
            f"offset={self.offset}"
        )
