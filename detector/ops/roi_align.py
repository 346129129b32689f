"""RoIAlign (He et al., Mask R-CNN, ICCV 2017, section 3) and the seed's variants, in pure PyTorch.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, kh x kw: output size
    n: sampling points per bin side (``sampling_ratio``; per RoI when adaptive)

RoIAlign keeps an RoI's real-valued coordinates (no quantization: the seed's whole point) and reads
each output bin from n x n points, each the bilinear interpolation of its four neighbouring cells.
Options beyond ``torchvision.ops.roi_align`` (which these defaults equal):

    reduction="avg" | "max":  average the samples (Mask R-CNN, torchvision) or take their maximum
        (the seed: "calculate corresponding values then apply max pooling"; Mask R-CNN's max variant).
    sample_layout="centered" | "interior":  points at ((k + 0.5) / n) of the bin (torchvision), or at
        (k / (n + 1)), k = 1..n, as the seed draws them (X = 9.375 + 2.39 * 1/3 and 2/3).

This module is the public API; the work is split by concern:
    :mod:`detector.ops.roi_align_geometry`  RoIs in cells, sample positions, interpolation taps;
    :mod:`detector.ops.sparse_map`          the autograd kernel that applies the taps to features;
    :mod:`detector.ops.roi_align_torchvision`  on CUDA, the fixed-grid modes as calls of torchvision's
                                            fused kernel (faster there; the gather kernel is on the CPU).

Three things a call can compute from the same taps (``_Mode``): ``avg`` (each bin's samples folded
into one row of taps), ``max`` (one row per sample, max-pooled per bin), and ``samples`` (one row per
sample, returned unreduced: :func:`roi_align_samples`, to inspect or draw what RoIAlign reads).
An adaptive max (``sampling_ratio <= 0``) whose RoIs have different grids runs one call per grid
(:meth:`RoIGeometry.grid_groups`), so that no RoI pays for the largest RoI's samples and no sample
beyond a RoI's own grid can win its max.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from detector.ops._utils import BoxesType, boxes_to_rois, check_roi_inputs, pair
from detector.ops.dense import exporting, roi_align_dense
from detector.ops.roi_align_geometry import (
    LAYOUTS,
    RoIGeometry,
    axis_weights,
    bin_average,
    roi_geometry,
    sample_points,
    tap_products,
    taps,
)
from detector.ops.roi_align_torchvision import roi_align_by_torchvision
from detector.ops.sparse_map import SparseRoIAlign, plan_chunks

__all__ = ["RoIAlign", "roi_align", "roi_align_samples", "sample_points"]

_REDUCTIONS = ("avg", "max")
_LAYOUTS = LAYOUTS
_Mode = Literal["avg", "max", "samples"]


def roi_align(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    reduction: str = "avg",
    sample_layout: str = "centered",
) -> Tensor:
    """RoIAlign with torchvision's calling convention.

    Args:
        input: [N, C, H, W] feature map (any float dtype, any device, need not be contiguous).
        boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N tensors [Ki, 4], in input-image
            pixels (multiplied by ``spatial_scale`` to reach feature cells).
        output_size: k or (kh, kw).
        spatial_scale: 1 / stride of the feature map (1/32 for the seed's VGG16 with 5 pools).
        sampling_ratio: n samples per bin side; <= 0 = adaptive, ceil(roi size / output size).
        aligned: shift the RoI by -0.5 cell so that a point at continuous (c + 0.5) reads cell c
            exactly, as the seed's FM(9.5, 6.5) does (Detectron2's ROIAlignV2). ``False`` is the
            original Mask R-CNN op (and torchvision's default), which also stretches RoIs smaller
            than one cell to one cell.
        reduction: "avg" or "max" over each bin's samples.
        sample_layout: "centered" ((k + 0.5) / n) or "interior" (k / (n + 1), the seed's points).

    Returns:
        [K, C, kh, kw]
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, reduction, sample_layout)


def roi_align_samples(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    *,
    sample_layout: str = "centered",
) -> Tensor:
    """Every bilinear sample RoIAlign reads, before the per-bin reduction (to inspect or draw them).

    Same arguments as :func:`roi_align`, with a fixed ``sampling_ratio`` n >= 1.

    Returns:
        [K, C, kh * n, kw * n]; bin (i, j) holds rows ``i*n .. i*n+n-1`` and columns ``j*n .. j*n+n-1``.
    """
    if sampling_ratio <= 0:
        raise ValueError("roi_align_samples needs a fixed sampling_ratio >= 1")
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, "samples", sample_layout)


def _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, mode: _Mode, sample_layout):
    if sample_layout not in _LAYOUTS:
        raise ValueError(f"sample_layout must be one of {_LAYOUTS}, got {sample_layout!r}")
    # Geometry in at least float32: a half-precision map must not round box corners (bf16 keeps
    # 8 bits, a few pixels at 800) before they are scaled; the gather rounds the weights to the
    # map's dtype, the backward sums in float32 (detector.ops.sparse_map).
    rois = boxes_to_rois(boxes, input, dtype=torch.promote_types(input.dtype, torch.float32))
    check_roi_inputs(input, rois)
    kh, kw = output_size = pair(output_size)
    num_rois, num_images, channels = rois.shape[0], input.shape[0], input.shape[1]
    if num_rois == 0:
        # Keep the graph connected so that backward through an empty batch works.
        n = max(sampling_ratio, 1) if mode == "samples" else 1
        return input.new_zeros((0, channels, kh * n, kw * n)) + 0 * input.sum()
    if exporting():  # fixed shapes for an exported program (detector.ops.dense)
        if mode == "samples":
            raise ValueError("roi_align_samples is an inspection tool; it is not exported")
        return roi_align_dense(input, rois, output_size, spatial_scale, sampling_ratio, aligned, mode, sample_layout)
    with torch.no_grad():
        batch_idx = rois[:, 0].long()
        if bool(((batch_idx < 0) | (batch_idx >= num_images)).any()):
            raise ValueError(
                f"boxes' batch indices must lie in [0, {num_images - 1}] (the input holds {num_images} "
                f"images), got {int(batch_idx.min())}..{int(batch_idx.max())}"
            )
    if uses_torchvision_kernel(input.device, sampling_ratio, mode, sample_layout):
        return roi_align_by_torchvision(input, rois, output_size, spatial_scale, sampling_ratio, aligned, mode, sample_layout)
    with torch.no_grad():
        geometry = roi_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    if mode == "max" and not geometry.uniform_grid:
        groups = geometry.grid_groups()
        pieces = [_align(input, geometry.select(idx), output_size, sample_layout, mode) for idx in groups]
        return torch.cat(pieces)[torch.argsort(torch.cat(groups))]
    return _align(input, geometry, output_size, sample_layout, mode)


def uses_torchvision_kernel(device: torch.device, sampling_ratio: int, mode: _Mode, sample_layout: str) -> bool:
    """Whether a call runs torchvision's fused kernel (:mod:`detector.ops.roi_align_torchvision`).

    On CUDA, every mode it can express: any fixed grid, and the adaptive grid of avg with centered
    samples (torchvision's own op). The CPU keeps the gather kernel, several times faster there
    (docs/operators.md); an adaptive max or interior layout has per-RoI grids torchvision cannot take.
    """
    return device.type == "cuda" and (sampling_ratio > 0 or (mode == "avg" and sample_layout == "centered"))


def _align(input: Tensor, g: RoIGeometry, output_size: tuple[int, int], layout: str, mode: _Mode) -> Tensor:
    """RoIAlign of RoIs that share one grid when ``mode`` is ``max`` (any grids for ``avg``)."""
    kh, kw = output_size
    num_rois = g.batch_idx.shape[0]
    num_images, channels, height, width = input.shape
    n_w, n_h = max(int(g.grid_w.max()), 1), max(int(g.grid_h.max()), 1)
    if mode == "max" and int(g.grid_w[0]) * int(g.grid_h[0]) == 0:
        # No sample at all (zero-size boxes with ``aligned``): reads 0, as avg does.
        return input.new_zeros((num_rois, channels, kh, kw)) + 0 * input.sum()
    with torch.no_grad():
        wx = axis_weights(g.x1, g.bin_w, g.grid_w, n_w, kw, width, layout)  # [K, kw, n, W]
        wy = axis_weights(g.y1, g.bin_h, g.grid_h, n_h, kh, height, layout)  # [K, kh, n, H]
        kernel = None
        if mode == "avg":
            wx, wy = bin_average(wx, g.grid_w), bin_average(wy, g.grid_h)  # [K, kw, W], [K, kh, H]
        else:
            # One row per sample, in (bin, sample) order: bin (i, j) holds sample rows i*n .. i*n+n-1
            # and columns j*n .. j*n+n-1 (what roi_align_samples returns; max-pool windows).
            wx = wx.reshape(num_rois, kw * n_w, width)  # [K, kw*n, W]
            wy = wy.reshape(num_rois, kh * n_h, height)  # [K, kh*n, H]
            if mode == "max":
                kernel = (n_h, n_w)  # every RoI has this grid here (see _roi_align)
        # Each output (or sample) row reads the product of its row taps and its column taps.
        row_cells, row_w = taps(wy)  # [K, A, Ty]
        col_cells, col_w = taps(wx)  # [K, B, Tx]
        a, b = row_cells.shape[1], col_cells.shape[1]
        plan, index_dtype = plan_chunks(
            num_rois, a, b, kernel, channels=channels, taps=row_cells.shape[2] * col_cells.shape[2],
            num_cells=num_images * height * width, device=input.device,
        )
        row_cells = (g.batch_idx[:, None, None] * (height * width) + row_cells * width).to(index_dtype)
        cells = tap_products(row_cells, col_cells.to(index_dtype), torch.add)  # [K*A*B, T]
        weights = tap_products(row_w, col_w, torch.mul)  # the geometry's dtype; see sparse_map
    return SparseRoIAlign.apply(input, cells, weights, plan)


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`; every option is explicit (libraries disagree on defaults)."""

    def __init__(
        self,
        *,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
        reduction: str = "avg",
        sample_layout: str = "centered",
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        if sample_layout not in _LAYOUTS:
            raise ValueError(f"sample_layout must be one of {_LAYOUTS}, got {sample_layout!r}")
        self.output_size = pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.reduction = reduction
        self.sample_layout = sample_layout

    def forward(self, input: Tensor, boxes: BoxesType) -> Tensor:
        return roi_align(
            input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned,
            reduction=self.reduction, sample_layout=self.sample_layout,
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
            f"reduction={self.reduction!r}, sample_layout={self.sample_layout!r}"
        )
