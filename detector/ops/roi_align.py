"""RoIAlign (He et al., Mask R-CNN, ICCV 2017, section 3) and the seed's variants, in pure PyTorch.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch (Ki of image i), kh x kw: output size
    n: sampling points per bin side (``sampling_ratio``; per RoI when adaptive)

RoIAlign keeps an RoI's real-valued coordinates (no quantization: the seed's whole point) and reads
each output bin from n x n points, each the bilinear interpolation of its four neighbouring cells.
Options beyond ``torchvision.ops.roi_align`` (which these defaults equal):

    reduction="avg" | "max":  average the samples (Mask R-CNN, torchvision) or take their maximum
        (the seed: "calculate corresponding values then apply max pooling"; Mask R-CNN's max variant).
    sample_layout="centered" | "interior":  points at ((k + 0.5) / n) of the bin (torchvision), or at
        (k / (n + 1)), k = 1..n, as the seed draws them (X = 9.375 + 2.39 * 1/3 and 2/3).

Why hand-written: no library offers the max reduction or the interior layout, on CPU or GPU. And
written this way it is also faster than torchvision's CPU kernel (see ``tools/benchmark.py``):
bilinear sampling on a regular grid is *separable*. Sample (y, x) reads
``sum_h sum_w a(y, h) b(x, w) F[h, w]`` where a(y, .) holds y's two row weights and b(x, .) x's two
column weights, so for one RoI

    avg:  out[c] = Ay @ F[c] @ Bx^T   with Ay [kh, H] the row weights averaged over each bin's n rows
                                      and Bx [kw, W] the column weights likewise,
    max:  samples[c] = Sy @ F[c] @ Sx^T  with one row per sample (Sy [kh*n, H], Sx [kw*n, W]),
          then an n x n max-pool (its gradient goes to the winning sample's four neighbours).

Per image these are two batched matrix products over its RoIs, and autograd gives the backward pass
as matrix products too. No [K, C, H, W] intermediate is formed: the largest is [Ki, kh*n, C, W]
(or [Ki, kw*n, C, H], whichever is smaller).
Gradients flow to ``input`` only (boxes are treated as constants, as in torchvision).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.ops._utils import BoxesType, boxes_to_rois, check_roi_inputs, pair

_REDUCTIONS = ("avg", "max")
_LAYOUTS = ("centered", "interior")


def _sample_positions(
    start: Tensor, bin_size: Tensor, grid: Tensor, n_max: int, bins: int, layout: str
) -> Tensor:
    """Sample coordinates along one axis, [K, bins, n_max], in index space (cell c spans [c, c+1))."""
    k = torch.arange(n_max, device=start.device, dtype=start.dtype)
    g = grid.to(start.dtype).clamp(min=1)[:, None]
    frac = (k + 1) / (g + 1) if layout == "interior" else (k + 0.5) / g  # [K, n_max]
    b = torch.arange(bins, device=start.device, dtype=start.dtype)
    return start[:, None, None] + bin_size[:, None, None] * (b[None, :, None] + frac[:, None, :])


def sample_points(
    box: tuple[float, float, float, float],
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    *,
    sample_layout: str = "centered",
) -> tuple[Tensor, Tensor]:
    """Where RoIAlign samples one box, in continuous feature-map units (cell c's value sits at c + 0.5).

    These are the seed's coordinates: for its RoI (300, 210, 530, 390) at stride 32 with 3x3 bins and
    2x2 interior points the first bin's points are X = 10.17, 10.97 and Y = 7.19, 7.81.

    Returns:
        (xs [kw * n], ys [kh * n]); bin j's points along x are ``xs[j*n : (j+1)*n]``.
    """
    if sampling_ratio <= 0:
        raise ValueError("sample_points needs a fixed sampling_ratio >= 1")
    kh, kw = pair(output_size)
    x1, y1, x2, y2 = (float(v) * spatial_scale for v in box)
    w, h = x2 - x1, y2 - y1
    if not aligned:
        w, h = max(w, 1.0), max(h, 1.0)
    n = torch.tensor([sampling_ratio])
    f64 = dict(dtype=torch.float64)
    # In continuous units the -0.5 shift of ``aligned`` and the +0.5 to reach a cell's centre cancel;
    # without ``aligned`` the op reads cell c's value at c (half a cell off the seed's convention).
    shift = 0.0 if aligned else 0.5
    xs = _sample_positions(torch.tensor([x1], **f64), torch.tensor([w / kw], **f64), n, sampling_ratio, kw, sample_layout)
    ys = _sample_positions(torch.tensor([y1], **f64), torch.tensor([h / kh], **f64), n, sampling_ratio, kh, sample_layout)
    return xs.reshape(-1) + shift, ys.reshape(-1) + shift


def _axis_weights(
    start: Tensor, bin_size: Tensor, grid: Tensor, n_max: int, bins: int, size: int, layout: str
) -> tuple[Tensor, Tensor]:
    """Per-sample interpolation weights along one axis.

    Args:
        start, bin_size: [K] RoI start and bin size along the axis, in feature cells (index space).
        grid: int64 [K] samples per bin along the axis (may differ per RoI when adaptive).
        n_max: max(grid): samples beyond a RoI's own grid are masked out.
        bins: number of output bins along the axis; size: feature-map size along the axis.

    Returns:
        weights [K, bins, n_max, size] (row of sample -> its one or two cells' weights) and
        valid bool [K, 1, n_max] (which of the n_max samples exist for each RoI).
    """
    k = torch.arange(n_max, device=start.device, dtype=start.dtype)
    coord = _sample_positions(start, bin_size, grid, n_max, bins, layout)  # [K, bins, n_max]

    # torchvision's bilinear_interpolate rule: a sample more than one cell outside the map reads 0;
    # one within [-1, 0] is clamped to 0; at the last cell both neighbours are the last cell.
    outside = (coord < -1.0) | (coord > size)
    coord = coord.clamp(min=0)
    low = coord.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    coord = torch.where(at_edge, low, coord)
    high = torch.where(at_edge, low, low + 1)
    w_high = coord - low
    w_low = 1 - w_high
    valid = (k[None, :] < grid[:, None]).unsqueeze(1)  # [K, 1, n_max]
    keep = (~outside & valid).to(start.dtype)

    weights = coord.new_zeros(*coord.shape, size)
    weights.scatter_add_(-1, low.long().unsqueeze(-1), (w_low * keep).unsqueeze(-1))
    weights.scatter_add_(-1, high.long().unsqueeze(-1), (w_high * keep).unsqueeze(-1))
    return weights, valid


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
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, "none", sample_layout)


def _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, reduction, sample_layout):
    if sample_layout not in _LAYOUTS:
        raise ValueError(f"sample_layout must be one of {_LAYOUTS}, got {sample_layout!r}")
    rois = boxes_to_rois(boxes, input)
    check_roi_inputs(input, rois)
    kh, kw = pair(output_size)
    num_rois, channels, height, width = rois.shape[0], input.shape[1], input.shape[2], input.shape[3]
    if num_rois == 0:
        # Keep the graph connected so that backward through an empty batch works.
        n = max(sampling_ratio, 1) if reduction == "none" else 1
        return input.new_zeros((0, channels, kh * n, kw * n)) + 0 * input.sum()

    with torch.no_grad():
        offset = 0.5 if aligned else 0.0
        x1 = rois[:, 1] * spatial_scale - offset
        y1 = rois[:, 2] * spatial_scale - offset
        roi_w = rois[:, 3] * spatial_scale - offset - x1
        roi_h = rois[:, 4] * spatial_scale - offset - y1
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_w, bin_h = roi_w / kw, roi_h / kh
        if sampling_ratio > 0:
            grid_w = torch.full((num_rois,), sampling_ratio, dtype=torch.int64, device=input.device)
            grid_h = grid_w
        else:
            grid_w = torch.ceil(roi_w / kw).long()
            grid_h = torch.ceil(roi_h / kh).long()
        n_w, n_h = max(int(grid_w.max()), 1), max(int(grid_h.max()), 1)
        wx, valid_x = _axis_weights(x1, bin_w, grid_w, n_w, kw, width, sample_layout)  # [K,kw,n,W]
        wy, valid_y = _axis_weights(y1, bin_h, grid_h, n_h, kh, height, sample_layout)  # [K,kh,n,H]
        if reduction == "avg":
            # Average over each bin's samples here, so the products below read each bin once.
            # torchvision divides by max(n_h * n_w, 1); a RoI with no sample reads 0.
            wx = wx.sum(2) / grid_w.clamp(min=1).to(wx.dtype)[:, None, None]  # [K, kw, W]
            wy = wy.sum(2) / grid_h.clamp(min=1).to(wy.dtype)[:, None, None]  # [K, kh, H]
            n_h = n_w = 1
            bias = None
        else:
            wx = wx.reshape(num_rois, kw * n_w, width)  # [K, kw*n, W]
            wy = wy.reshape(num_rois, kh * n_h, height)  # [K, kh*n, H]
            bias = None
            if not (bool(valid_x.all()) and bool(valid_y.all())):
                # Samples beyond a RoI's own (adaptive) grid must never win the max.
                mask_x = valid_x.expand(num_rois, kw, n_w).reshape(num_rois, 1, 1, kw * n_w)
                mask_y = valid_y.expand(num_rois, kh, n_h).reshape(num_rois, kh * n_h, 1, 1)
                bias = torch.zeros((num_rois, kh * n_h, 1, kw * n_w), dtype=input.dtype, device=input.device)
                bias.masked_fill_(~(mask_x & mask_y), float("-inf"))
        batch_idx = rois[:, 0].long()
        images = torch.unique(batch_idx).tolist()
        groups = [torch.nonzero(batch_idx == b).squeeze(1) for b in images]
        order = torch.cat(groups)
        in_order = bool((order == torch.arange(num_rois, device=order.device)).all())

    q, p = wy.shape[1], wx.shape[1]
    # Contract the axis whose intermediate is smaller first: rows first makes [Ki, Q, C, W], columns
    # first [Ki, P, C, H]. Columns first is rows first on the transposed map, with the roles of
    # (wy, kh, n_h, H) and (wx, kw, n_w, W) swapped; the result is [Ki, kw, C, kh] then.
    transposed = p * height < q * width
    if transposed:
        w_first, w_second, size_first, size_second = wx, wy, width, height
        out_a, n_a, out_b, n_b = kw, n_w, kh, n_h
        if bias is not None:
            bias = bias.transpose(1, 3)
    else:
        w_first, w_second, size_first, size_second = wy, wx, height, width
        out_a, n_a, out_b, n_b = kh, n_h, kw, n_w
    a, b_len = w_first.shape[1], w_second.shape[1]
    pieces = []
    for b, idx in zip(images, groups):
        ki = idx.numel()
        wf, ws = (w_first, w_second) if ki == num_rois else (w_first[idx], w_second[idx])
        # Two products, with layouts chosen so that no large tensor is ever permuted (rows first):
        # [Ki*Q, H] @ [H, C*W] -> [Ki, Q*C, W];  then  [Ki, Q*C, W] @ [Ki, W, P] -> [Ki, Q, C, P].
        feat = input[b].transpose(2, 1) if transposed else input[b]  # [C, first, second]
        feat_t = feat.transpose(0, 1).reshape(size_first, channels * size_second)  # small copy
        rows = (wf.reshape(ki * a, size_first) @ feat_t).view(ki, a * channels, size_second)
        samples = torch.bmm(rows, ws.transpose(1, 2)).view(ki, a, channels, b_len)
        if reduction == "max":
            if bias is not None:
                samples = samples + (bias if ki == num_rois else bias[idx])
            # Max over each bin's n x n samples, one axis at a time: max-with-indices routes the
            # gradient to the single winning sample (and on to its four neighbours), and its
            # backward is a cheap scatter (amax's would compare every sample with the max).
            pooled = samples.view(ki, out_a, n_a, channels, out_b, n_b).max(dim=5).values.max(dim=2).values
            # A RoI whose bins hold no sample (zero-size, adaptive grid 0) reads 0, as with avg.
            pooled = pooled.masked_fill(torch.isneginf(pooled), 0.0)
        else:
            pooled = samples  # avg (already averaged), or "none": every sample
        pieces.append(pooled)  # [Ki, out_a, C, out_b]
    output = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    if not in_order:
        output = output[torch.argsort(order)]
    # -> [K, C, kh, kw] (or the samples' grid)
    return (output.permute(0, 2, 3, 1) if transposed else output.permute(0, 2, 1, 3)).contiguous()


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
