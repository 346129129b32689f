"""RoIAlign's fixed-grid modes as calls of torchvision's fused kernel: the operators' CUDA path.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, kh x kw: output size
    n: sampling points per bin side (a fixed ``sampling_ratio``)

On a GPU the gather formulation of :mod:`detector.ops.sparse_map` (build the taps, gather, reduce)
ran 2 to 4 times slower than ``torchvision.ops.roi_align``'s one fused kernel at the training shape
(``tools/benchmark.py ops --device cuda``, docs/operators.md), while on the CPU it is several times
faster. torchvision's kernel computes only the avg reduction with centered samples, but every fixed
grid reduces to it: with ``sampling_ratio=1`` it reads each bin at one point, the bin's centre, and
shifting the whole RoI by ``bin * (p - 0.5)`` moves that point to the fraction ``p`` of its bin. So
the n x n samples of any layout are n x n calls on shifted RoIs, each a bin-per-sample map:

    centered: p = (k + 0.5) / n          interior (the seed's points): p = (k + 1) / (n + 1)

and ``max`` is ``max_pool2d`` over each bin's n x n samples, as in the gather kernel. torchvision's
bilinear rules (a point more than a cell outside reads 0; at the border, the last cell) are the ones
:mod:`detector.ops.roi_align_geometry` transcribes, so both paths compute the same numbers (up to the
rounding of the shifted corners: tests/ops compare them). Written by hand because no library offers
the max reduction or the interior layout; this file only composes torchvision's kernel.

Half-precision maps are pooled in float32 and cast back, as torchvision's autocast wrapper does (its
kernel wants boxes of the map's dtype, and bf16 box corners would be off by pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor


def roi_align_by_torchvision(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    sample_layout: str,
) -> Tensor:
    """:func:`detector.ops.roi_align`'s result (``mode`` avg, max or samples) from torchvision's kernel.

    Args:
        input: [N, C, H, W]; rois: [K, 5] (batch index, x1, y1, x2, y2) in input pixels, K >= 1.
        sampling_ratio: n >= 1; or <= 0 (adaptive) for avg with centered samples only.

    Returns:
        [K, C, kh, kw] (avg, max), or [K, C, kh * n, kw * n] (samples), in the input's dtype.
    """
    dtype = torch.promote_types(input.dtype, torch.float32)
    x, rois = input.to(dtype), rois.to(dtype)
    if mode == "avg" and sample_layout == "centered":
        return torchvision.ops.roi_align(x, rois, output_size, spatial_scale, sampling_ratio, aligned).to(input.dtype)
    if sampling_ratio <= 0:
        raise ValueError("only avg with centered samples has an adaptive sampling ratio on this path")
    kh, kw = output_size
    n = sampling_ratio
    # The RoI in cells, as torchvision's kernel computes it (it scales the corners itself; here it
    # gets them scaled, with spatial_scale 1, so that the shifts below are in cells too).
    cells = torch.cat([rois[:, :1], rois[:, 1:] * spatial_scale], dim=1)
    roi_w, roi_h = cells[:, 3] - cells[:, 1], cells[:, 4] - cells[:, 2]
    if not aligned:  # torchvision's (and Mask R-CNN's) rule: at least one cell
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    k = torch.arange(n, dtype=dtype, device=rois.device)
    p = (k + 1) / (n + 1) if sample_layout == "interior" else (k + 0.5) / n  # [n] fraction of the bin
    dx = (roi_w / kw)[:, None] * (p - 0.5)  # [K, n]
    dy = (roi_h / kh)[:, None] * (p - 0.5)
    zero = torch.zeros_like(dx[:, 0])
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            shift = torch.stack([zero, dx[:, j], dy[:, i], dx[:, j], dy[:, i]], dim=1)
            row.append(torchvision.ops.roi_align(x, cells + shift, output_size, 1.0, 1, aligned))  # [K, C, kh, kw]
        rows.append(torch.stack(row, dim=-1))  # [K, C, kh, kw, n_w]
    # [K, C, kh, n_h, kw, n_w] -> bin (a, b) holds sample rows a*n .. a*n+n-1 and columns b*n .. b*n+n-1.
    samples = torch.stack(rows, dim=3).reshape(len(rois), x.shape[1], kh * n, kw * n)
    if mode == "samples":
        return samples.to(input.dtype)
    if mode == "max":
        return F.max_pool2d(samples, n, n).to(input.dtype)
    return F.avg_pool2d(samples, n, n).to(input.dtype)
