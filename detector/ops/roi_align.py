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
from torch.nn import functional as F

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
        exists = None
        if reduction == "avg":
            # Average over each bin's samples here, so the products below read each bin once.
            # torchvision divides by max(n_h * n_w, 1); a RoI with no sample reads 0.
            wx = wx.sum(2) / grid_w.clamp(min=1).to(wx.dtype)[:, None, None]  # [K, kw, W]
            wy = wy.sum(2) / grid_h.clamp(min=1).to(wy.dtype)[:, None, None]  # [K, kh, H]
            kernel = None
        else:
            # One row per sample, in (bin, sample) order: the products give every sample, bin (i, j)
            # in rows i*n .. i*n+n-1 and columns j*n .. j*n+n-1 (what roi_align_samples returns).
            wx = wx.reshape(num_rois, kw * n_w, width)  # [K, kw*n, W]
            wy = wy.reshape(num_rois, kh * n_h, height)  # [K, kh*n, H]
            kernel = (n_h, n_w) if reduction == "max" else None
            if kernel and not (bool(valid_x.all()) and bool(valid_y.all())):
                # Adaptive grids differ per RoI: samples beyond a RoI's own grid must never win.
                exists = (valid_y.expand(-1, kh, -1).reshape(num_rois, -1), valid_x.expand(-1, kw, -1).reshape(num_rois, -1))
        order = torch.argsort(batch_idx, stable=True)
        in_order = bool((order == torch.arange(num_rois, device=order.device)).all())
        if not in_order:
            wx, wy = wx[order], wy[order]
            exists = None if exists is None else (exists[0][order], exists[1][order])

    # Contract the axis whose intermediate is smaller first: rows first makes [Ki, Q, C, W], columns
    # first [Ki, P, C, H]. Columns first is rows first on the transposed map, with the roles of
    # (wy, kh, H) and (wx, kw, W) swapped.
    transposed = wx.shape[1] * height < wy.shape[1] * width
    if transposed:
        plan = _Plan(counts, True, kernel[::-1] if kernel else None, exists[::-1] if exists else None)
        output = _SeparableRoIAlign.apply(input, wx, wy, plan)
    else:
        plan = _Plan(counts, False, kernel, exists)
        output = _SeparableRoIAlign.apply(input, wy, wx, plan)
    return output if in_order else output[torch.argsort(order)]


@dataclass(frozen=True)
class _Plan:
    """What :class:`_SeparableRoIAlign` computes beyond its tensors ("first" axis a, "second" b)."""

    counts: list[int]  # RoIs per image, in the (sorted) order of the weights
    transposed: bool  # the first axis is x (columns) rather than y (rows)
    kernel: tuple[int, int] | None  # max over (n_a, n_b) samples per bin; None: the products are the output
    exists: tuple[Tensor, Tensor] | None  # bool [K, A], [K, B]: samples within each RoI's own grid


class _SeparableRoIAlign(torch.autograd.Function):
    """Both products (and the max, when asked) over cache-sized chunks of RoIs, with its own backward.

    forward(input [N, C, H, W], w_first [K, A, size_first], w_second [K, B, size_second], plan)
        -> [K, C, kh, kw]   (A, B = kh, kw for avg; kh * n, kw * n for max and for every sample)

    Per chunk of a few RoIs of one image (``_chunks``), with the map channels-last, ``map_t``
    [size_first, size_second * C]:
        rows    = w_first @ map_t               [ck*A, size_second, C]   (one matrix product)
        samples = w_second @ rows, row by row   [ck*A, B, C]             (one batched product)
    Channels-last is what ``max_pool2d`` reduces fastest on the CPU (vectorised over channels), and
    its window (n_a, n_b) is one bin's samples. The backward runs the same products transposed.

    Why a Function rather than autograd over these products: autograd would keep every chunk's
    samples (n_a * n_b times the output) alive until the backward pass; here the forward keeps the
    weights and, for max, the winning sample's index per output, and the backward rebuilds each
    chunk's sample gradient from them. Chunks keep the intermediates in cache on the CPU
    (``_CPU_CHUNK_ELEMENTS``), which is most of the speed; on a GPU one chunk per image is best.
    """

    @staticmethod
    def forward(ctx, input: Tensor, w_first: Tensor, w_second: Tensor, plan: _Plan) -> Tensor:
        num_rois, channels = w_first.shape[0], input.shape[1]
        a, b = w_first.shape[1], w_second.shape[1]
        n_a, n_b = plan.kernel or (1, 1)
        out_a, out_b = a // n_a, b // n_b
        output = input.new_empty(num_rois, channels, *((out_b, out_a) if plan.transposed else (out_a, out_b)))
        out_view = output.transpose(2, 3) if plan.transposed else output  # [K, C, out_a, out_b]
        winner = None
        if plan.kernel:
            # max_pool2d's flat index into the bin grid, channels-last like the samples (cheap copies).
            winner = torch.empty((num_rois, out_a, out_b, channels), dtype=_index_dtype(a * b), device=input.device)
            winner = winner.permute(0, 3, 1, 2)
        for _, s, e, map_t in _chunks(input, w_first, w_second, plan):
            samples = _samples(map_t, w_first[s:e], w_second[s:e])  # [ck, A, B, C]
            if plan.exists is not None:
                samples = samples + _missing_samples_bias(plan.exists[0][s:e], plan.exists[1][s:e], input.dtype)
            samples = samples.permute(0, 3, 1, 2)  # [ck, C, A, B], channels-last in memory
            if plan.kernel:
                pooled, idx = F.max_pool2d_with_indices(samples, plan.kernel, plan.kernel)
                if plan.exists is not None:
                    # A RoI whose bins hold no sample (zero-size, adaptive grid 0) reads 0, as with avg.
                    pooled = pooled.masked_fill(torch.isneginf(pooled), 0.0)
                out_view[s:e] = pooled
                winner[s:e] = idx
            else:
                out_view[s:e] = samples
        ctx.save_for_backward(w_first, w_second, winner)
        ctx.plan, ctx.input_shape = plan, input.shape
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        w_first, w_second, winner = ctx.saved_tensors
        plan = ctx.plan
        channels = ctx.input_shape[1]
        a, b, size_first, size_second = w_first.shape[1], w_second.shape[1], w_first.shape[2], w_second.shape[2]
        grad_view = grad_output.transpose(2, 3) if plan.transposed else grad_output  # [K, C, out_a, out_b]
        grad_map_t = {}  # image -> the gradient of its map_t, [size_first, size_second * C]
        for image, s, e, _ in _chunks(None, w_first, w_second, plan, channels):
            ck = e - s
            # Channels-last: the layout of the samples, and max_pool2d's fast path (14x faster here).
            g = grad_view[s:e].contiguous(memory_format=torch.channels_last)
            if plan.kernel:
                # Each output's gradient goes to its winning sample (and, through the products, to
                # that sample's four neighbouring cells); the bin's other samples get none.
                like = g.new_empty(ck, a, b, channels).permute(0, 3, 1, 2)  # only its shape and layout are read
                g = torch.ops.aten.max_pool2d_with_indices_backward(
                    g, like, plan.kernel, plan.kernel, (0, 0), (1, 1), False, winner[s:e].long()
                )
            g = g.permute(0, 2, 3, 1).reshape(ck * a, b, channels)  # d samples, a view
            w_rep = w_second[s:e, None].expand(ck, a, b, size_second).reshape(ck * a, b, size_second)
            d_rows = torch.bmm(w_rep.transpose(1, 2), g)  # [ck*A, size_second, C]
            acc = grad_map_t.setdefault(image, g.new_zeros(size_first, size_second * channels))
            acc.addmm_(w_first[s:e].reshape(ck * a, size_first).t(), d_rows.view(ck * a, -1))
        grad_input = grad_output.new_zeros(ctx.input_shape)
        for image, acc in grad_map_t.items():
            acc = acc.view(size_first, size_second, channels)  # back from map_t's layout, see _chunks
            grad_input[image] = acc.permute(2, 1, 0) if plan.transposed else acc.permute(2, 0, 1)
        return grad_input, None, None, None


def _index_dtype(window: int) -> torch.dtype:
    """The smallest integer type that holds a flat index into a window of this many samples."""
    return torch.int16 if window <= 2**15 else torch.int32 if window <= 2**31 else torch.int64


def _samples(map_t: Tensor, w_first: Tensor, w_second: Tensor) -> Tensor:
    """Every bilinear sample of a chunk of ck RoIs of one image, [ck, A, B, C], in two products."""
    ck, a, size_first = w_first.shape
    b, size_second = w_second.shape[1], w_second.shape[2]
    rows = (w_first.reshape(ck * a, size_first) @ map_t).view(ck * a, size_second, -1)  # [ck*A, size_second, C]
    # Each of a RoI's A rows meets the same column weights: repeat them (small) and batch over rows.
    w_rep = w_second[:, None].expand(ck, a, b, size_second).reshape(ck * a, b, size_second)
    return torch.bmm(w_rep, rows).view(ck, a, b, -1)


def _missing_samples_bias(exists_a: Tensor, exists_b: Tensor, dtype: torch.dtype) -> Tensor:
    """[ck, A, B, 1]: 0 where the sample is within its RoI's own grid, -inf where not (never the max)."""
    exists = exists_a[:, :, None, None] & exists_b[:, None, :, None]
    return torch.zeros(exists.shape, dtype=dtype, device=exists.device).masked_fill_(~exists, float("-inf"))


def _chunks(input: Tensor | None, w_first: Tensor, w_second: Tensor, plan: _Plan, channels: int | None = None):
    """Yield (image, first RoI s, end e, map_t) over chunks of at most a cache's worth of RoIs.

    ``map_t`` is the image's map channels-last with the first axis leading,
    [size_first, size_second * C] (None when ``input`` is None), so that the first product is one
    matrix product for the whole chunk.
    """
    a, b, size_second = w_first.shape[1], w_second.shape[1], w_second.shape[2]
    channels = input.shape[1] if input is not None else channels
    per_roi = a * channels * max(size_second, b)  # elements of the larger intermediate, per RoI
    chunk = max(1, _CPU_CHUNK_ELEMENTS // per_roi) if w_first.device.type == "cpu" else None
    start = 0
    for image, count in enumerate(plan.counts):
        if count == 0:
            continue
        map_t = None
        if input is not None:
            # [C, H, W] -> [H, W, C] (or [W, H, C] transposed): a small copy, once per image.
            map_t = input[image].permute(2, 1, 0) if plan.transposed else input[image].permute(1, 2, 0)
            map_t = map_t.reshape(map_t.shape[0], -1)
        for s in range(start, start + count, chunk or count):
            yield image, s, min(s + (chunk or count), start + count), map_t
        start += count


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
