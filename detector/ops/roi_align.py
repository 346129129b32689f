"""RoIAlign (He et al., Mask R-CNN, ICCV 2017, section 3) and the seed's variants, in pure PyTorch.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, kh x kw: output size
    n: sampling points per bin side (``sampling_ratio``; per RoI when adaptive)
    A x B: rows x columns per RoI (kh x kw bins for avg; kh*n x kw*n samples for max)
    T: taps (cells read) per row

RoIAlign keeps an RoI's real-valued coordinates (no quantization: the seed's whole point) and reads
each output bin from n x n points, each the bilinear interpolation of its four neighbouring cells.
Options beyond ``torchvision.ops.roi_align`` (which these defaults equal):

    reduction="avg" | "max":  average the samples (Mask R-CNN, torchvision) or take their maximum
        (the seed: "calculate corresponding values then apply max pooling"; Mask R-CNN's max variant).
    sample_layout="centered" | "interior":  points at ((k + 0.5) / n) of the bin (torchvision), or at
        (k / (n + 1)), k = 1..n, as the seed draws them (X = 9.375 + 2.39 * 1/3 and 2/3).

Why hand-written: no library offers the max reduction or the interior layout, on CPU or GPU. The
formulation here also makes it faster than torchvision's CPU kernel (``tools/benchmark.py ops``).
RoIAlign is *linear* in the feature map: a sample is the bilinear interpolation of (at most) four
cells, and a bin's average is a weighted sum of the few cells its samples touch. With the map laid
out channels-last as a table ``map [N*H*W, C]``,

    out[r, :] = sum_t weights[r, t] * map[cells[r, t], :]       (r: one bin, or one sample for max)

which is exactly ``F.embedding_bag`` with per-sample weights: a gather of whole channel vectors,
vectorised over C. Bilinear weights are separable, so a row's taps are the products of its row taps
and its column taps (``_axis_weights``, then ``_taps``):

    avg:  one row per bin; its n x n samples are folded into the bin's taps first: a bin reads each
          cell its samples span once (3 x 3 at most for a bin under a cell wide), not 4 n^2 taps.
    max:  one row per sample (up to 4 taps), then ``max_pool2d`` over each bin's n x n samples; its
          gradient goes to the winning sample, and on to that sample's four cells. With adaptive
          grids, RoIs are run in groups of equal (n_h, n_w).

The backward is the transposed map: each cell sums weight * gradient over the taps that read it,
which is the same op once the taps are grouped by cell (``_taps_by_cell``). Both passes run over
cache-sized chunks of RoIs on the CPU. Memory: no [K, C, H, W] intermediate; besides the output and
the map-sized gradient, the largest tensors are one chunk's samples and, kept for the backward, the
taps ([K*A*B, T] indices and weights) and max's winners (1 byte per output when A*B <= 256); the
backward briefly holds the taps sorted by cell (3-4x the saved taps).
Gradients flow to ``input`` only (boxes are treated as constants, as in torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from detector.ops._utils import BoxesType, boxes_to_rois, check_roi_inputs, pair

_REDUCTIONS = ("avg", "max")

# One chunk of RoIs on the CPU holds at most this many elements of samples (4 MiB in float32;
# a single RoI with more samples is a chunk of its own):
# small enough to stay in cache between the gather, the pooling and the copy out, large enough to
# keep Python's per-chunk overhead small. Measured at the training shape (tools/benchmark.py ops,
# max f+b): 1 Mi elements (10 RoIs for max, 41 for avg) beat 0.25, 0.5, 2 and 4 Mi.
_CPU_CHUNK_ELEMENTS = 1 << 20
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
) -> Tensor:
    """Per-sample interpolation weights along one axis.

    Args:
        start, bin_size: [K] RoI start and bin size along the axis, in feature cells (index space).
        grid: int64 [K] samples per bin along the axis (may differ per RoI when adaptive).
        n_max: max(grid): samples beyond a RoI's own grid are masked out.
        bins: number of output bins along the axis; size: feature-map size along the axis.

    Returns:
        weights [K, bins, n_max, size]: row of sample -> its one or two cells' weights (all 0 for
        the samples beyond a RoI's own grid, and for samples outside the map).
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
    return weights


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
    # Geometry in at least float32: a half-precision map must not round box corners (bf16 keeps
    # 8 bits, a few pixels at 800) before they are scaled; the weights are cast to the map's dtype.
    rois = boxes_to_rois(boxes, input, dtype=torch.promote_types(input.dtype, torch.float32))
    check_roi_inputs(input, rois)
    kh, kw = pair(output_size)
    num_rois, num_images, channels, height, width = rois.shape[0], *input.shape
    if num_rois == 0:
        # Keep the graph connected so that backward through an empty batch works.
        n = max(sampling_ratio, 1) if reduction == "none" else 1
        return input.new_zeros((0, channels, kh * n, kw * n)) + 0 * input.sum()

    with torch.no_grad():
        batch_idx = rois[:, 0].long()
        if bool(((batch_idx < 0) | (batch_idx >= num_images)).any()):
            raise ValueError(
                f"boxes' batch indices must lie in [0, {num_images - 1}] (the input holds {num_images} "
                f"images), got {int(batch_idx.min())}..{int(batch_idx.max())}"
            )
        offset = 0.5 if aligned else 0.0
        x1 = rois[:, 1] * spatial_scale - offset
        y1 = rois[:, 2] * spatial_scale - offset
        roi_w = rois[:, 3] * spatial_scale - offset - x1
        roi_h = rois[:, 4] * spatial_scale - offset - y1
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_w, bin_h = roi_w / kw, roi_h / kh
        if isinstance(sampling_ratio, tuple):  # (n_h, n_w): one bucket of an adaptive max, below
            grid_h = torch.full((num_rois,), sampling_ratio[0], dtype=torch.int64, device=input.device)
            grid_w = torch.full((num_rois,), sampling_ratio[1], dtype=torch.int64, device=input.device)
        elif sampling_ratio > 0:
            grid_w = torch.full((num_rois,), sampling_ratio, dtype=torch.int64, device=input.device)
            grid_h = grid_w
        else:
            # An inverted box (x2 < x1 with ``aligned``) has no sample, like a zero-size one.
            grid_w = torch.ceil(roi_w / kw).long().clamp(min=0)
            grid_h = torch.ceil(roi_h / kh).long().clamp(min=0)
    if reduction == "max":
        adaptive = not isinstance(sampling_ratio, tuple) and sampling_ratio <= 0
        if adaptive and not (bool((grid_w == grid_w[0]).all()) and bool((grid_h == grid_h[0]).all())):
            return _adaptive_max_by_grid(input, rois, output_size, spatial_scale, aligned, sample_layout, grid_h, grid_w)
        if int(grid_w[0]) * int(grid_h[0]) == 0:
            # No sample at all (zero-size boxes with ``aligned``): reads 0, as avg does.
            return input.new_zeros((num_rois, channels, kh, kw)) + 0 * input.sum()

    with torch.no_grad():
        n_w, n_h = max(int(grid_w.max()), 1), max(int(grid_h.max()), 1)
        wx = _axis_weights(x1, bin_w, grid_w, n_w, kw, width, sample_layout)  # [K, kw, n, W]
        wy = _axis_weights(y1, bin_h, grid_h, n_h, kh, height, sample_layout)  # [K, kh, n, H]
        kernel = None
        if reduction == "avg":
            # Average over each bin's samples here: the bin then reads each cell once, with the
            # summed weight of all its samples. torchvision divides by max(n_h * n_w, 1).
            wx = wx.sum(2) / grid_w.clamp(min=1).to(wx.dtype)[:, None, None]  # [K, kw, W]
            wy = wy.sum(2) / grid_h.clamp(min=1).to(wy.dtype)[:, None, None]  # [K, kh, H]
        else:
            # One row per sample, in (bin, sample) order: bin (i, j) holds sample rows i*n .. i*n+n-1
            # and columns j*n .. j*n+n-1 (what roi_align_samples returns; max-pool windows).
            wx = wx.reshape(num_rois, kw * n_w, width)  # [K, kw*n, W]
            wy = wy.reshape(num_rois, kh * n_h, height)  # [K, kh*n, H]
            if reduction == "max":
                kernel = (n_h, n_w)  # every RoI has this grid here (adaptive ones were bucketed)
        # Each output (or sample) row reads the product of its row taps and its column taps.
        row_cells, row_w = _taps(wy)  # [K, A, Ty]
        col_cells, col_w = _taps(wx)  # [K, B, Tx]
        a, b, taps = row_cells.shape[1], col_cells.shape[1], row_cells.shape[2] * col_cells.shape[2]
        rois_per_chunk = num_rois
        if input.device.type == "cpu":
            rois_per_chunk = min(max(1, _CPU_CHUNK_ELEMENTS // (a * b * channels)), num_rois)
        num_chunks = -(-num_rois // rois_per_chunk)
        num_cells = num_images * height * width
        # int32 indices where every index fits (the backward's (chunk, cell) keys, the tap count):
        # half the memory traffic, and the backward's sort runs 2x faster.
        fits = max(num_chunks * num_cells, num_rois * a * b * taps) < 2**31
        index_dtype = torch.int32 if fits else torch.int64
        row_cells = (batch_idx[:, None, None] * (height * width) + row_cells * width).to(index_dtype)
        cells = _tap_products(row_cells, col_cells.to(index_dtype), torch.add)  # [K*A*B, T]
        weights = _tap_products(row_w, col_w, torch.mul).to(input.dtype)
    plan = _Plan(a, b, kernel, rois_per_chunk, num_chunks)
    return _SparseRoIAlign.apply(input, cells, weights, plan)


def _adaptive_max_by_grid(input, rois, output_size, spatial_scale, aligned, sample_layout, grid_h, grid_w):
    """Adaptive max with RoIs of different grids: one call per (n_h, n_w), so that no RoI pays for
    the largest RoI's samples (and no sample beyond a RoI's own grid can win its max)."""
    stride = int(grid_w.max()) + 1
    key = grid_h * stride + grid_w
    pieces, order = [], []
    for k in torch.unique(key).tolist():
        idx = torch.nonzero(key == k).squeeze(1)
        grid = divmod(k, stride)  # (n_h, n_w)
        pieces.append(_roi_align(input, rois[idx], output_size, spatial_scale, grid, aligned, "max", sample_layout))
        order.append(idx)
    return torch.cat(pieces)[torch.argsort(torch.cat(order))]


def _tap_products(row: Tensor, col: Tensor, op) -> Tensor:
    """[K, A, Ty] and [K, B, Tx] -> [K*A*B, Ty*Tx]: ``op`` of every row tap with every column tap.

    Spelled out in two steps so that the large op runs with a contiguous inner axis of Ty*Tx: a
    one-step broadcast over [K, A, B, Ty, Tx] runs 6x slower on the CPU (inner axes of 2).
    """
    (num_rois, a, ty), (b, tx) = row.shape, col.shape[1:]
    row = row[:, :, :, None].expand(num_rois, a, ty, tx).reshape(num_rois, a, 1, ty * tx)
    col = col[:, :, None, :].expand(num_rois, b, ty, tx).reshape(num_rois, 1, b, ty * tx)
    return op(row, col).reshape(num_rois * a * b, ty * tx)


def _taps(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Dense interpolation weights along one axis -> the few cells each row reads, and their weights.

    [K, R, size] -> [K, R, T], T the most nonzero weights any row has (at most 2 for a sample; the
    cells its samples touch for an avg bin). A row with fewer reads some cells with weight 0.
    """
    nonzero = (weights != 0).to(torch.uint8)
    taps = max(int(nonzero.sum(-1).max()), 1)
    cells = nonzero.topk(taps, dim=-1).indices  # the nonzero cells first, in any order
    return cells, weights.gather(-1, cells)


@dataclass(frozen=True)
class _Plan:
    """What :class:`_SparseRoIAlign` computes beyond its tensors."""

    a: int  # rows per RoI: output rows (avg), or sample rows (max, every sample)
    b: int  # columns per RoI, likewise
    kernel: tuple[int, int] | None  # max over (n_h, n_w) samples per bin; None: the rows are the output
    rois_per_chunk: int  # RoIs per chunk (all of them on a GPU)
    num_chunks: int


class _SparseRoIAlign(torch.autograd.Function):
    """RoIAlign as a sparse linear map of the channels-last map, with its own backward.

    forward(input [N, C, H, W], cells [K*A*B, T], weights [K*A*B, T], plan)
        -> [K, C, A / n_h, B / n_w] for max, [K, C, A, B] otherwise (avg: kh x kw; every sample)

    Row r of the output (or of the samples) is ``sum_t weights[r, t] * map[cells[r, t], :]`` with
    ``map`` the input as [N*H*W, C]: an ``embedding_bag`` with per-sample weights, which gathers and
    sums whole channel vectors at once (vectorised over C). The backward is the transposed map,
    ``grad_map[cell] = sum over the taps that read it of weight * grad_row``: the same op with the
    taps grouped by cell (one sort), see ``_taps_by_cell``.

    max: the samples of a chunk of RoIs come out channels-last, which is the layout ``max_pool2d``
    reduces fastest (vectorised over channels); its window (n_h, n_w) is one bin's samples. The
    forward keeps only the winning sample's index per output, and the backward rebuilds each chunk's
    sample gradient from it, so n_h * n_w times the output never stays alive. Chunks keep the samples
    in cache on the CPU (``_CPU_CHUNK_ELEMENTS``); on a GPU one chunk is best.
    """

    @staticmethod
    def forward(ctx, input: Tensor, cells: Tensor, weights: Tensor, plan: _Plan) -> Tensor:
        num_images, channels, height, width = input.shape
        a, b = plan.a, plan.b
        n_h, n_w = plan.kernel or (1, 1)
        num_rois = cells.shape[0] // (a * b)
        # The map as a table of channel vectors: a copy of the whole map (a view if the input is
        # already channels-last), small next to the output.
        table = input.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
        output = input.new_empty(num_rois, channels, a // n_h, b // n_w)
        winner = None
        if plan.kernel:
            # max_pool2d's flat index into the RoI's A x B sample plane, channels-last like the samples.
            winner = _channels_last(num_rois, channels, a // n_h, b // n_w, dtype=_index_dtype(a * b), device=input.device)
            # Buffers reused by every chunk: fresh ones per chunk cost more in page faults than the
            # pooling itself (measured at the training shape).
            size = (plan.rois_per_chunk, channels, a // n_h, b // n_w)
            pooled_buf = _channels_last(*size, dtype=input.dtype, device=input.device)
            idx_buf = _channels_last(*size, dtype=torch.int64, device=input.device)
        for s, e in _chunks(num_rois, plan.rois_per_chunk):
            rows = slice(s * a * b, e * a * b)
            samples = F.embedding_bag(cells[rows], table, per_sample_weights=weights[rows], mode="sum")
            samples = samples.view(e - s, a, b, channels).permute(0, 3, 1, 2)  # [ck, C, A, B], channels-last
            if plan.kernel is None:
                output[s:e] = samples
                continue
            pooled, idx = pooled_buf[: e - s], idx_buf[: e - s]
            torch.ops.aten.max_pool2d_with_indices.out(samples, plan.kernel, plan.kernel, (0, 0), (1, 1), False, out=pooled, indices=idx)
            output[s:e] = pooled
            winner[s:e] = idx
        ctx.save_for_backward(cells, weights, winner)
        ctx.plan, ctx.input_shape = plan, input.shape
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        cells, weights, winner = ctx.saved_tensors
        plan = ctx.plan
        num_images, channels, height, width = ctx.input_shape
        a, b, taps = plan.a, plan.b, cells.shape[1]
        rows_per_chunk = plan.rois_per_chunk * a * b
        # Buffers reused by every chunk (fresh ones per chunk cost more in page faults than the rest
        # of the backward pass), channels-last like the samples.
        grad_buf = _channels_last(plan.rois_per_chunk, *grad_output.shape[1:], dtype=grad_output.dtype, device=grad_output.device)
        if plan.kernel:
            idx_buf = _channels_last(plan.rois_per_chunk, *grad_output.shape[1:], dtype=torch.int64, device=grad_output.device)
            samples_buf = _channels_last(plan.rois_per_chunk, channels, a, b, dtype=grad_output.dtype, device=grad_output.device)
        bags = _taps_by_cell(cells, weights, rows_per_chunk, plan.num_chunks, num_images * height * width)
        grad_map = grad_output.new_zeros(num_images * height * width, channels)
        for i, (s, e) in enumerate(_chunks(grad_output.shape[0], plan.rois_per_chunk)):
            # Channels-last, the samples' layout (and max_pool2d's fast path: 14x faster than NCHW here).
            g = grad_buf[: e - s].copy_(grad_output[s:e])
            if plan.kernel:
                # Each output's gradient goes to its winning sample (and through the taps to that
                # sample's four neighbouring cells); the bin's other samples get none. The kernel
                # reads only the shape and layout of its `input` argument, so the buffer it writes
                # stands in for the samples.
                g = torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
                    g, samples_buf[: e - s], plan.kernel, plan.kernel, (0, 0), (1, 1), False,
                    idx_buf[: e - s].copy_(winner[s:e]), grad_input=samples_buf[: e - s],
                )
            grad_rows = g.permute(0, 2, 3, 1).reshape((e - s) * a * b, channels)  # a view
            # The transposed map, on this chunk's taps: one bag per cell the chunk reads, summing
            # weight * grad_rows[row] over the taps that read it.
            taps_i, bags_i = slice(s * a * b * taps, e * a * b * taps), bags.chunk_bags(i)
            per_cell = F.embedding_bag(
                bags.rows[taps_i], grad_rows, bags.offsets[bags_i], per_sample_weights=bags.weights[taps_i], mode="sum"
            )
            grad_map.index_add_(0, bags.cells[bags_i], per_cell)
        grad_input = grad_map.view(num_images, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return grad_input, None, None, None


@dataclass(frozen=True)
class _TapsByCell:
    """The forward's taps grouped by (chunk, cell): the backward's bags. See :func:`_taps_by_cell`."""

    rows: Tensor  # [K*A*B*T]: the row of each sorted tap, counted from its chunk's first row
    weights: Tensor  # [K*A*B*T]: its weight
    offsets: Tensor  # [bags]: where each (chunk, cell) bag starts, counted from its chunk's first tap
    cells: Tensor  # [bags]: the cell each bag belongs to
    first_bag: list[int]  # chunk i's bags are first_bag[i] .. first_bag[i + 1] - 1

    def chunk_bags(self, i: int) -> slice:
        return slice(self.first_bag[i], self.first_bag[i + 1])


def _taps_by_cell(cells: Tensor, weights: Tensor, rows_per_chunk: int, num_chunks: int, num_cells: int) -> _TapsByCell:
    """The forward's taps grouped by the cell they read, chunk by chunk, for the backward pass.

    The backward of ``embedding_bag`` (rows gather cells) scatters each row's gradient back to its
    cells. Sorted by cell, the taps of one cell form one bag of the same op on the gradient rows, so
    the backward is a gather too (``index_add_`` per tap measured 15x slower here). One stable sort,
    keyed by (chunk, cell), serves every chunk: chunk i's taps stay in positions
    ``[i * rows_per_chunk * T, (i + 1) * rows_per_chunk * T)``, and only the cells a chunk reads get
    a bag, so a chunk costs its taps, not the size of the map.
    """
    taps = cells.shape[1]
    flat = cells.reshape(-1)  # int32 where every key fits (see _roi_align)
    taps_per_chunk = rows_per_chunk * taps
    key = torch.arange(flat.numel(), device=flat.device, dtype=flat.dtype) // taps_per_chunk * num_cells + flat
    key, order = torch.sort(key, stable=True)  # stable: a cell sums its taps in row order, run after run
    bag_key, bag_size = torch.unique_consecutive(key, return_counts=True)
    bag_chunk = bag_key // num_cells
    first_bag = torch.cumsum(torch.bincount(bag_chunk, minlength=num_chunks), 0).tolist()
    return _TapsByCell(
        rows=order // taps % rows_per_chunk,
        weights=weights.reshape(-1)[order],
        offsets=torch.cumsum(bag_size, 0) - bag_size - bag_chunk * taps_per_chunk,
        cells=(bag_key - bag_chunk * num_cells).long(),
        first_bag=[0, *first_bag],
    )


def _channels_last(n: int, c: int, h: int, w: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised [n, c, h, w] tensor laid out channels-last ([n, h, w, c] in memory)."""
    return torch.empty((n, h, w, c), dtype=dtype, device=device).permute(0, 3, 1, 2)


def _index_dtype(plane: int) -> torch.dtype:
    """The smallest integer type that holds a flat index into a sample plane of this many samples."""
    return torch.uint8 if plane <= 2**8 else torch.int16 if plane <= 2**15 else torch.int32


def _chunks(num_rois: int, rois_per_chunk: int):
    """(start, end) over the RoIs, ``rois_per_chunk`` at a time."""
    for s in range(0, num_rois, rois_per_chunk):
        yield s, min(s + rois_per_chunk, num_rois)


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
