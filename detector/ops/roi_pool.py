"""RoIPool (Fast R-CNN, Girshick 2015, section 2.1) with the two quantization rules of the seed.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, kh x kw: output size

RoIPool snaps an RoI to whole feature cells, splits it into kh x kw bins of whole cells and takes the
max of each bin, per channel; the gradient goes to the argmax cell. Two rules for the snapping:

``quantization="round"`` -- Fast R-CNN's (and torchvision's): round the RoI's corners to cells,
    ``x1' = round(x1 * s)``, ``x2' = round(x2 * s)``, width ``x2' - x1' + 1``; bin j spans
    ``[floor(j * w / kw), ceil((j + 1) * w / kw))``, so neighbouring bins may overlap by a cell and
    together they cover the whole rounded RoI.
``quantization="floor"`` -- the seed's double quantization: floor the origin, floor the width and
    height, floor the bin size (at least one cell), and crop the remainder. The seed's example
    (RoI x, y, w, h = 300, 210, 230, 180 at stride 32) gives X = 9.375 -> 9, Y = 6.563 -> 6,
    W = 7.188 -> 7, H = 5.625 -> 5, bins 7/3 -> 2 by 5/3 -> 1: columns 9..14 and rows 6..8 are pooled,
    column 15 and rows 9..10 are lost (the "missing portion of the boy").

Why not hand-written: the "round" rule is exactly ``torchvision.ops.roi_pool``'s kernel (CPU and CUDA,
argmax backward), and the "floor" rule is the same kernel fed with a rewritten box. In cell units
(``spatial_scale=1``) the box ``[X, Y, X + kw*bw - 1, Y + kh*bh - 1]`` makes the kernel's rounded width
exactly ``kw * bw``, its bin size exactly the integer ``bw``, so its bins are the seed's bins
``[X + j*bw, X + (j+1)*bw)`` and nothing else changes (clipping to the map, empty bins read 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import roi_pool as _tv_roi_pool

from detector.ops._utils import BoxesType, boxes_to_rois, check_roi_inputs, pair

_QUANTIZATIONS = ("round", "floor")


def floor_quantize(rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
    """The seed's quantized RoI in feature cells: [K, 5] (batch, X, Y, bw, bh), all integral.

    ``X, Y`` are the floored origin and ``bw, bh`` the floored bin sizes (>= 1); the pooled region is
    ``[X, X + kw * bw) x [Y, Y + kh * bh)``.
    """
    kh, kw = output_size
    x = torch.floor(rois[:, 1] * spatial_scale)
    y = torch.floor(rois[:, 2] * spatial_scale)
    w = torch.floor((rois[:, 3] - rois[:, 1]) * spatial_scale)
    h = torch.floor((rois[:, 4] - rois[:, 2]) * spatial_scale)
    bw = torch.clamp(torch.floor(w / kw), min=1)
    bh = torch.clamp(torch.floor(h / kh), min=1)
    return torch.stack([rois[:, 0], x, y, bw, bh], dim=1)


def roi_pool(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    *,
    quantization: str = "round",
) -> Tensor:
    """Max-pool each RoI into a fixed ``output_size`` grid.

    Args:
        input: [N, C, H, W] feature map (any float dtype, CPU or CUDA).
        boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N tensors [Ki, 4], in input-image
            pixels (multiplied by ``spatial_scale`` to reach feature cells).
        output_size: k or (kh, kw).
        spatial_scale: 1 / stride of the feature map (1/32 for the seed's VGG16 with 5 pools).
        quantization: "round" (Fast R-CNN, torchvision) or "floor" (the seed's double quantization).

    Returns:
        [K, C, kh, kw]
    """
    if quantization not in _QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {quantization!r}")
    size = pair(output_size)
    if quantization == "round":
        return _tv_roi_pool(input, boxes, size, spatial_scale)
    rois = boxes_to_rois(boxes, input, dtype=torch.float64)
    check_roi_inputs(input, rois)
    q = floor_quantize(rois, size, spatial_scale)
    kh, kw = size
    cells = torch.stack(
        [q[:, 0], q[:, 1], q[:, 2], q[:, 1] + kw * q[:, 3] - 1, q[:, 2] + kh * q[:, 4] - 1], dim=1
    )
    return _tv_roi_pool(input, cells.to(input.dtype), size, 1.0)


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`; ``spatial_scale`` is explicit (never guessed from shapes)."""

    def __init__(
        self, *, output_size: int | tuple[int, int], spatial_scale: float, quantization: str = "round"
    ) -> None:
        super().__init__()
        if quantization not in _QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {_QUANTIZATIONS}, got {quantization!r}")
        self.output_size = pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.quantization = quantization

    def forward(self, input: Tensor, boxes: BoxesType) -> Tensor:
        return roi_pool(input, boxes, self.output_size, self.spatial_scale, quantization=self.quantization)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"quantization={self.quantization!r}"
        )
