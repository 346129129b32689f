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

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable
from torch import Tensor, nn

from detector.ops._utils import BoxesType, boxes_to_rois, check_roi_inputs, pair

_REDUCTIONS = ("avg", "max")

# One chunk of RoIs on the CPU holds at most this many elements in its largest intermediate
# (8 MiB in float32): small enough to stay in cache, large enough for the matrix products to run
# at speed. Measured at the training shape (tools/benchmark.py ops): chunks of 4-16 RoIs for max
# ran alike, one chunk per image was 2x slower.
_CPU_CHUNK_ELEMENTS = 1 << 21
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
        batch_idx = rois[:, 0].long()
        counts = torch.bincount(batch_idx.clamp(min=0), minlength=input.shape[0]).tolist()
        if len(counts) > input.shape[0] or bool((batch_idx < 0).any()):
            raise ValueError(
                f"boxes' batch indices must lie in [0, {input.shape[0] - 1}] (the input holds "
                f"{input.shape[0]} images), got {int(batch_idx.min())}..{int(batch_idx.max())}"
            )
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
        valid = None
        if reduction == "avg":
            # Average over each bin's samples here, so the products below read each bin once.
            # torchvision divides by max(n_h * n_w, 1); a RoI with no sample reads 0.
            wx = wx.sum(2) / grid_w.clamp(min=1).to(wx.dtype)[:, None, None]  # [K, kw, W]
            wy = wy.sum(2) / grid_h.clamp(min=1).to(wy.dtype)[:, None, None]  # [K, kh, H]
            n_h = n_w = 1
        elif reduction == "none":
            # Every sample is an output: rows in (bin, sample) order, the grid roi_align_samples returns.
            wx = wx.reshape(num_rois, kw * n_w, width)  # [K, kw*n, W]
            wy = wy.reshape(num_rois, kh * n_h, height)  # [K, kh*n, H]
            kh, kw, n_h, n_w = kh * n_h, kw * n_w, 1, 1
        else:
            # Rows in (sample, bin) order: sample offset (i, j) of every bin is then one strided slice
            # whose last axis is contiguous, and the max runs as elementwise maxima over n x n slices.
            wx = wx.transpose(1, 2).reshape(num_rois, n_w * kw, width)  # [K, n*kw, W]
            wy = wy.transpose(1, 2).reshape(num_rois, n_h * kh, height)  # [K, n*kh, H]
            if not (bool(valid_x.all()) and bool(valid_y.all())):
                # Adaptive grids differ per RoI: samples beyond a RoI's own grid must never win.
                valid = (valid_y.view(num_rois, n_h), valid_x.view(num_rois, n_w))
        order = torch.argsort(batch_idx, stable=True)
        in_order = bool((order == torch.arange(num_rois, device=order.device)).all())
        if not in_order:
            wx, wy = wx[order], wy[order]
            valid = None if valid is None else (valid[0][order], valid[1][order])

    # Contract the axis whose intermediate is smaller first: rows first makes [Ki, Q, C, W], columns
    # first [Ki, P, C, H]. Columns first is rows first on the transposed map, with the roles of
    # (wy, kh, n_h, H) and (wx, kw, n_w, W) swapped.
    transposed = wx.shape[1] * height < wy.shape[1] * width
    if transposed:
        plan = _Plan(counts, transposed, reduction == "max", kw, n_w, kh, n_h, valid[::-1] if valid else None)
        output = _SeparableRoIAlign.apply(input, wx, wy, plan)
    else:
        plan = _Plan(counts, transposed, reduction == "max", kh, n_h, kw, n_w, valid)
        output = _SeparableRoIAlign.apply(input, wy, wx, plan)
    return output if in_order else output[torch.argsort(order)]


@dataclass(frozen=True)
class _Plan:
    """What :class:`_SeparableRoIAlign` computes, beyond its tensors (a = first axis, b = second)."""

    counts: list[int]  # RoIs per image, in the (sorted) order of the weights
    transposed: bool  # first axis is x (columns) rather than y (rows)
    take_max: bool  # max over each bin's n_a x n_b samples; else the products are the output
    out_a: int  # bins along the first axis
    n_a: int  # samples per bin along it (1 unless take_max)
    out_b: int
    n_b: int
    valid: tuple[Tensor, Tensor] | None  # bool [K, n_a], [K, n_b]: which samples exist (adaptive max)


class _SeparableRoIAlign(torch.autograd.Function):
    """Both products (and the max, when asked) over cache-sized chunks of RoIs, with its own backward.

    forward(input [N, C, H, W], w_first [K, A, size_first], w_second [K, B, size_second], plan)
        -> [K, C, kh, kw], with A = n_a * out_a rows and B = n_b * out_b columns per RoI.

    Why a Function rather than autograd over the products: autograd would keep every chunk's
    [Ki, A, C, B] samples (four times the output for a 2 x 2 grid) and route the max's gradient
    through generic scatters; here the forward keeps only the winning sample's index per output
    (one byte), and the backward rebuilds each chunk's sample gradient from it, chunk by chunk.
    Chunks keep the intermediates in cache on the CPU (``_CPU_CHUNK_ELEMENTS``), which is most of
    the speed; on a GPU one chunk per image is best (fewer, larger kernels).
    """

    @staticmethod
    def forward(ctx, input: Tensor, w_first: Tensor, w_second: Tensor, plan: _Plan) -> Tensor:
        num_rois, channels = w_first.shape[0], input.shape[1]
        out_a, out_b = plan.out_a, plan.out_b
        output = input.new_empty(num_rois, channels, *((out_b, out_a) if plan.transposed else (out_a, out_b)))
        out_view = _by_first_axis(output, plan.transposed)  # [K, out_a, C, out_b], a view
        winner = None
        if plan.take_max:
            codes = plan.n_a * plan.n_b
            winner = torch.empty(out_view.shape, dtype=torch.uint8 if codes <= 256 else torch.int32, device=input.device)
        for b, s, e, feat_t in _chunks(input, w_first, w_second, plan, channels):
            ck, size_first = e - s, w_first.shape[2]
            rows = w_first[s:e].reshape(-1, size_first) @ feat_t  # [ck*A, C*size_second]
            samples = torch.bmm(rows.view(ck, -1, w_second.shape[2]), w_second[s:e].transpose(1, 2))  # [ck, A*C, B]
            if plan.take_max:
                valid = None if plan.valid is None else (plan.valid[0][s:e], plan.valid[1][s:e])
                samples = samples.view(ck, plan.n_a, out_a, channels, plan.n_b, out_b)
                _max_over_samples(samples, valid, out_view[s:e], winner[s:e])
            else:
                out_view[s:e] = samples.view(ck, out_a, channels, out_b)
        ctx.save_for_backward(w_first, w_second, winner)
        ctx.plan, ctx.input_shape = plan, input.shape
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        w_first, w_second, winner = ctx.saved_tensors
        plan = ctx.plan
        channels = ctx.input_shape[1]
        size_first, size_second = w_first.shape[2], w_second.shape[2]
        grad_view = _by_first_axis(grad_output, plan.transposed)  # [K, out_a, C, out_b]
        grad_input = grad_output.new_zeros(ctx.input_shape)
        grad_t = {}
        for b, s, e, _ in _chunks(None, w_first, w_second, plan, channels):
            ck = e - s
            g = grad_view[s:e]
            if plan.take_max:
                # Each output's gradient goes to its winning sample (and, through the products, to
                # that sample's four neighbouring cells); the other samples of the bin get none.
                # The n_a x n_b slices below cover every element: no zero fill needed.
                g_samples = g.new_empty(ck, plan.n_a, plan.out_a, channels, plan.n_b, plan.out_b)
                for i in range(plan.n_a):
                    for j in range(plan.n_b):
                        won = (winner[s:e] == i * plan.n_b + j).to(g.dtype)  # a product: 3x faster than where
                        torch.mul(g, won, out=g_samples[:, i, :, :, j, :])
                g = g_samples
            g = g.reshape(ck, -1, plan.n_b * plan.out_b)  # [ck, A*C, B]
            partial = torch.bmm(g, w_second[s:e]).view(-1, channels * size_second)  # [ck*A, C*size_second]
            acc = grad_t.setdefault(b, g.new_zeros(size_first, channels * size_second))
            acc.addmm_(w_first[s:e].reshape(-1, size_first).t(), partial)
        for b, acc in grad_t.items():
            if plan.transposed:  # acc[w, c*H + h] is input[b, c, h, w]'s gradient
                grad_input[b] = acc.view(size_first, channels, size_second).permute(1, 2, 0)
            else:  # acc[h, c*W + w]
                grad_input[b] = acc.view(size_first, channels, size_second).transpose(0, 1)
        return grad_input, None, None, None


def _by_first_axis(t: Tensor, transposed: bool) -> Tensor:
    """[K, C, kh, kw] -> a view [K, out_a, C, out_b] (first axis, channels, second axis)."""
    return t.permute(0, 3, 1, 2) if transposed else t.permute(0, 2, 1, 3)


def _chunks(input: Tensor | None, w_first: Tensor, w_second: Tensor, plan: _Plan, channels: int):
    """Yield (image b, first RoI s, end e, feat_t) over chunks of at most a cache's worth of RoIs.

    ``feat_t`` [size_first, C * size_second] is image b's map with the first axis leading, so that
    the first product is one matrix product for the whole chunk (None when ``input`` is None).
    """
    a, b_cols, size_second = w_first.shape[1], w_second.shape[1], w_second.shape[2]
    on_cpu = w_first.device.type == "cpu"
    start = 0
    for b, count in enumerate(plan.counts):
        if count == 0:
            continue
        feat_t = None
        if input is not None:
            feat = input[b].transpose(1, 2) if plan.transposed else input[b]  # [C, first, second]
            feat_t = feat.transpose(0, 1).reshape(feat.shape[1], channels * size_second)  # small copy
        per_roi = a * channels * max(size_second, b_cols)  # elements of the larger product, per RoI
        chunk = max(1, _CPU_CHUNK_ELEMENTS // per_roi) if on_cpu else count
        for s in range(start, start + count, chunk):
            yield b, s, min(s + chunk, start + count), feat_t
        start += count


def _max_over_samples(samples: Tensor, valid, out: Tensor, winner: Tensor) -> None:
    """Max over each bin's n_a x n_b samples, and which one won, into ``out`` and ``winner``.

    Args:
        samples: [ck, n_a, out_a, C, n_b, out_b]; sample (i, j) of every bin is ``samples[:, i, :, :, j]``.
        valid: None, or bool [ck, n_a] and [ck, n_b]: the samples each RoI's own grid holds.
        out: [ck, out_a, C, out_b] (may be a strided view); winner: same shape, integer.
    """
    n_a, n_b = samples.shape[1], samples.shape[4]
    exists = None if valid is None else (valid[0][:, :, None] & valid[1][:, None, :]).view(-1, n_a, n_b, 1, 1, 1)
    best = samples[:, 0, :, :, 0].clone()
    if exists is not None:
        best.masked_fill_(~exists[:, 0, 0], float("-inf"))
    winner.zero_()
    for i in range(n_a):
        for j in range(n_b):
            if i == j == 0:
                continue
            v = samples[:, i, :, :, j]
            if exists is not None:
                v = v.masked_fill(~exists[:, i, j], float("-inf"))
            # Codes only grow along the loop, so the last sample to beat the running best is the
            # largest code that did: a maximum, much cheaper on the CPU than masked_fill_ / where.
            # Ties keep the earlier sample, as torch.max does.
            torch.maximum(winner, (v > best).to(winner.dtype).mul_(i * n_b + j), out=winner)
            torch.maximum(best, v, out=best)  # propagates NaN, as torch.max does
    if exists is not None:
        # A RoI whose bins hold no sample (zero-size, adaptive grid 0) reads 0, as with avg.
        best.masked_fill_(~exists[:, 0, 0], 0.0)
    out.copy_(best)


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
