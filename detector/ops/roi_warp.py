"""RoIWarp (Dai et al., MNC 2016; the middle row of Mask R-CNN's Table 2c): RoIPool's quantized RoI,
RoIAlign's bilinear sampling inside it.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size; K: RoIs; kh x kw: output size

Mask R-CNN separates RoIPool's two losses of information: the RoI snapped to whole feature cells,
and bins that take whole cells instead of interpolated points. RoIWarp keeps the first and drops the
second, which is what makes it the control that isolates the quantization of the RoI itself:

* the RoI's corners are rounded to cells exactly as RoIPool's ``round`` rule (Fast R-CNN,
  torchvision): ``x1' = round(x1 * s)``, ``x2' = round(x2 * s)``, width ``max(x2' - x1' + 1, 1)``
  cells, so the region is the cells ``x1' .. x2'`` -- in continuous feature coordinates, where cell
  ``i`` covers ``[i, i + 1)``, the box ``[x1', x2' + 1)``;
* that region is then split into kh x kw bins and sampled bilinearly (n x n points per bin), reduced
  by ``avg`` or ``max`` -- RoIAlign with ``aligned=True`` on the snapped box, whose half-cell shift
  puts each cell's value at its centre.

Written here because no library has it (torchvision and detectron2 stopped at RoIPool and RoIAlign);
it is a few lines over :func:`detector.ops.roi_align`, so it shares that operator's kernels,
backward and tests of the sampling itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops._utils import BoxesType, boxes_to_rois, pair, round_half_away
from detector.ops.roi_align import roi_align

__all__ = ["RoIWarp", "quantize_rois", "roi_warp"]


def quantize_rois(rois: Tensor, spatial_scale: float) -> Tensor:
    """[K, 5] image-pixel RoIs -> [K, 5] RoIs of whole feature cells (RoIPool's round rule), in cell units."""
    scaled = round_half_away(rois[:, 1:].double() * spatial_scale)  # C's round, as torchvision's kernel
    x1, y1, x2, y2 = scaled.unbind(1)
    x2, y2 = torch.maximum(x2, x1), torch.maximum(y2, y1)  # at least one cell, as max(w, 1)
    cells = torch.stack([x1, y1, x2 + 1, y2 + 1], dim=1)
    return torch.cat([rois[:, :1].double(), cells], dim=1).to(rois.dtype)


def roi_warp(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    *,
    reduction: str = "avg",
) -> Tensor:
    """RoIWarp: ``input`` [N, C, H, W], boxes ([K, 5] or a list of [L, 4], image pixels) -> [K, C, kh, kw].

    Args:
        spatial_scale: feature cells per image pixel (1 / stride).
        sampling_ratio: n x n bilinear points per bin (<= 0: adaptive, as RoIAlign).
        reduction: ``avg`` or ``max`` over a bin's points (Mask R-CNN Table 2c has both).
    """
    # Rounded in float64 (a float16 coordinate could round across a cell border); the snapped corners
    # are whole cells, exact in the map's dtype.
    rois = boxes_to_rois(boxes, input, dtype=torch.float64)
    snapped = quantize_rois(rois, float(spatial_scale)).to(input.dtype)
    return roi_align(input, snapped, pair(output_size), 1.0, int(sampling_ratio), True, reduction=reduction)


class RoIWarp(nn.Module):
    """Module form of :func:`roi_warp`; every option is explicit."""

    def __init__(
        self, *, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int, reduction: str = "avg"
    ) -> None:
        super().__init__()
        if reduction not in ("avg", "max"):
            raise ValueError(f"reduction must be avg or max, got {reduction!r}")
        self.output_size = pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.reduction = reduction

    def forward(self, input: Tensor, boxes: BoxesType) -> Tensor:
        return roi_warp(input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, reduction=self.reduction)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, reduction={self.reduction!r}"
        )
