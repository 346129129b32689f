"""RoIPool (Fast R-CNN, Girshick 2015, section 2.1) with the two quantization rules of the seed.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, kh x kw: output size
    h x w: one RoI's quantized window in cells (its crop of the map); g: RoIs of one crop size

RoIPool snaps an RoI to whole feature cells, splits it into kh x kw bins of whole cells and takes the
max of each bin, per channel; the gradient goes to the argmax cell. Two rules for the snapping:

``quantization="round"`` -- Fast R-CNN's (and torchvision's): round the RoI's corners to cells,
    ``x1' = round(x1 * s)``, ``x2' = round(x2 * s)``, width ``w = max(x2' - x1' + 1, 1)``; bin j spans
    ``[floor(j * w / kw), ceil((j + 1) * w / kw))``, so neighbouring bins may overlap by a cell and
    together they cover the whole rounded RoI.
``quantization="floor"`` -- the seed's double quantization: floor the origin, floor the width and
    height, floor the bin size (at least one cell), and crop the remainder. The seed's example
    (RoI x, y, w, h = 300, 210, 230, 180 at stride 32) gives X = 9.375 -> 9, Y = 6.563 -> 6,
    W = 7.188 -> 7, H = 5.625 -> 5, bins 7/3 -> 2 by 5/3 -> 1: columns 9..14 and rows 6..8 are pooled,
    column 15 and rows 9..10 are lost (the "missing portion of the boy").

Both rules are one computation: quantize the RoI to a window of whole cells (origin and h x w), crop
it out of the map, and *adaptive*-max-pool the crop to kh x kw. PyTorch's adaptive pooling splits a
length h into bins ``[floor(i * h / kh), ceil((i + 1) * h / kh))`` -- Fast R-CNN's bins exactly -- and
the seed's window of ``kh * bh`` rows splits into bins of exactly ``bh``. Cells of the window outside
the map read -inf (a bin entirely outside reads 0, as torchvision's does).

Why hand-written on the CPU (on CUDA both rules run torchvision's kernel, the second on a rewritten
box): torchvision's CPU kernel is a serial loop over every output and every cell of its bin. Here
RoIs with the same window size form a batch: a gather of whole channel vectors (the map laid out
channels-last as a table ``[N*H*W, C]``, as in :mod:`detector.ops.roi_align`) crops them, and
``adaptive_max_pool2d`` -- vectorised over channels in the channels-last layout -- pools them.
A cell is read once per RoI (not once per bin that overlaps it). The forward keeps, per output, only
the index of the winning cell in its window (1 byte when the window holds at most 256 cells); the
backward rebuilds each batch's window gradient with ``adaptive_max_pool2d``'s own backward and adds
it to the map with one ``index_add_`` of channel vectors. Batches are cut to a cache-sized number of
elements. ``tools/benchmark.py ops`` measures it against torchvision's kernel.

One exactness detail: torchvision computes the round rule's bin edges in floating point
(``floor(j * (w / kw))``), which for a few window sizes (the first at w = 57 for kw = 7) differs by one
cell from the exact ``floor(j * w / kw)``. RoIs with such a window take a slow path that reads the
bins torchvision reads, one padded list of cells per bin (:func:`_pool_listed_bins`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F
from torchvision.ops import roi_pool as _tv_roi_pool

from detector.ops._utils import BoxesType, boxes_to_rois, channels_last_empty, check_roi_inputs, index_dtype, pair

_QUANTIZATIONS = ("round", "floor")

# One batch of RoIs on the CPU holds at most this many elements of cropped windows (4 MiB in float32;
# one RoI with a larger window is a batch of its own): the crop, its pooling and the copy out stay in
# cache. Measured at the training shape (tools/benchmark.py ops, roi_pool f+b).
_CPU_CHUNK_ELEMENTS = 1 << 20


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
    kh, kw = size
    # Geometry: the round rule in the map's precision (torchvision's, for equal results), but never
    # below float32; the floor rule in float64, so that a half-precision coordinate is not rounded
    # across a cell border before it is floored.
    geometry = torch.promote_types(input.dtype, torch.float32) if quantization == "round" else torch.float64
    rois = boxes_to_rois(boxes, input, dtype=geometry)
    check_roi_inputs(input, rois)
    num_images, channels, height, width = input.shape
    if rois.shape[0] == 0:
        return input.new_zeros((0, channels, kh, kw)) + 0 * input.sum()  # keeps backward connected
    if bool(((rois[:, 0] < 0) | (rois[:, 0] >= num_images)).any()):
        raise ValueError(
            f"boxes' batch indices must lie in [0, {num_images - 1}] (the input holds {num_images} "
            f"images), got {int(rois[:, 0].min())}..{int(rois[:, 0].max())}"
        )
    with torch.no_grad():
        if quantization == "round":
            x0, x1 = _round_half_away(rois[:, 1] * spatial_scale), _round_half_away(rois[:, 3] * spatial_scale)
            y0, y1 = _round_half_away(rois[:, 2] * spatial_scale), _round_half_away(rois[:, 4] * spatial_scale)
            w, h = (x1 - x0 + 1).clamp(min=1), (y1 - y0 + 1).clamp(min=1)
        else:
            q = floor_quantize(rois, size, spatial_scale)
            x0, y0, w, h = q[:, 1], q[:, 2], kw * q[:, 3], kh * q[:, 4]
    if input.is_cuda:
        # torchvision's CUDA kernel, fed the window as a box in cell units: its rounded width is
        # then exactly w (one kernel launch, against one batch per window size here).
        # In float32 at least: cell numbers above 256 are not integers in bfloat16 (2048 in float16),
        # and a max is exact through the round trip (rounding is monotonic).
        cells = torch.stack([rois[:, 0], x0, y0, x0 + w - 1, y0 + h - 1], dim=1)
        dtype = torch.promote_types(input.dtype, torch.float32)
        return _tv_roi_pool(input.to(dtype), cells.to(dtype), size, 1.0).to(input.dtype)

    with torch.no_grad():
        windows = torch.stack([rois[:, 0], y0, x0, h, w], dim=1).long()  # [K, 5] (batch, y, x, h, w)
        listed = torch.zeros(len(rois), dtype=torch.bool, device=input.device)
        if quantization == "round":
            listed = _float_bins_differ(h, kh) | _float_bins_differ(w, kw)
    if bool(listed.any()):
        # A few windows whose bins torchvision computes in floating point (module docstring): pool
        # those one listed bin at a time, and the rest as one batch per window size.
        out = _CropMaxPool.apply(input, _plan(windows[~listed], input.shape, size))
        slow = _pool_listed_bins(input, windows[listed], size, rois.dtype)
        order = torch.argsort(torch.cat([torch.nonzero(~listed).squeeze(1), torch.nonzero(listed).squeeze(1)]))
        return torch.cat([out, slow])[order]
    return _CropMaxPool.apply(input, _plan(windows, input.shape, size))


def _round_half_away(x: Tensor) -> Tensor:
    """C's ``round``: halves away from zero (``torch.round`` rounds halves to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _float_bins_differ(length: Tensor, bins: int) -> Tensor:
    """[K] bool: whether torchvision's floating-point bin edges differ from the exact integer ones."""
    bin_size = length / bins  # in the geometry's dtype, as torchvision's kernel computes it
    j = torch.arange(bins, device=length.device, dtype=length.dtype)
    n, ji = length.long()[:, None], torch.arange(bins, device=length.device)
    starts = torch.floor(j * bin_size[:, None]).long() != ji * n // bins
    ends = torch.ceil((j + 1) * bin_size[:, None]).long() != -(-(ji + 1) * n // bins)
    return (starts | ends).any(1)


@dataclass(frozen=True)
class _Batch:
    """RoIs with equal windows: pooled together."""

    rois: Tensor  # int64 [g]: their positions in the output
    cells: Tensor  # int64 [g, h, w]: the table row each window cell reads (N*H*W: outside the map)


@dataclass(frozen=True)
class _Plan:
    """What :class:`_CropMaxPool` computes: the batches, and the output's size."""

    batches: tuple[_Batch, ...]
    num_rois: int
    output_size: tuple[int, int]
    max_rois: int  # RoIs in the largest batch
    max_cells: int  # window cells in the largest batch (g * h * w)
    max_window: int  # cells in the largest window (h * w): the winners' index range
    empty: tuple[Tensor, Tensor, Tensor]  # (RoI, row, column) of the bins outside the map (read 0)


def _plan(windows: Tensor, input_shape: torch.Size, output_size: tuple[int, int]) -> _Plan:
    """Group the windows ([K, 5] batch, y, x, h, w) by size into cache-sized batches.

    The per-RoI geometry is computed once for all RoIs (each window's rows and columns as table
    offsets, up to the largest window); a batch then only slices it (Python's per-op cost, times
    the number of window sizes, is what planning costs).
    """
    num_images, channels, height, width = input_shape
    device = windows.device
    outside_row = num_images * height * width
    b, y0, x0, h, w = windows.unbind(1)
    kh, kw = output_size
    # A bin lies entirely outside the map when its rows or its columns do (adaptive pooling's bins).
    i, j = torch.arange(kh, device=device), torch.arange(kw, device=device)
    row_lo, row_hi = y0[:, None] + i * h[:, None] // kh, y0[:, None] - (-(i + 1) * h[:, None] // kh)
    col_lo, col_hi = x0[:, None] + j * w[:, None] // kw, x0[:, None] - (-(j + 1) * w[:, None] // kw)
    empty_rows = (row_hi <= 0) | (row_lo >= height)  # [K, kh]
    empty_cols = (col_hi <= 0) | (col_lo >= width)  # [K, kw]
    empty = torch.nonzero(empty_rows[:, :, None] | empty_cols[:, None, :]).unbind(1)  # few
    # Row r of a window reads table rows b*H*W + y*W + x; a row or a column outside the map is marked
    # negative (far below any valid sum) and sent to the outside row below.
    far = -2 * outside_row - 2
    ys = y0[:, None] + torch.arange(int(h.max()), device=device)  # [K, h_max]
    xs = x0[:, None] + torch.arange(int(w.max()), device=device)  # [K, w_max]
    row_base = torch.where((ys >= 0) & (ys < height), b[:, None] * (height * width) + ys * width, far)
    col = torch.where((xs >= 0) & (xs < width), xs, far)
    key = h * (int(w.max()) + 1) + w
    sizes, group = torch.unique(key, return_inverse=True)
    order = torch.argsort(group, stable=True)
    counts = torch.bincount(group, minlength=len(sizes)).tolist()
    sizes_hw = torch.stack([h, w], 1)[order[torch.cumsum(torch.tensor([0, *counts[:-1]]), 0)]].tolist()
    batches, start = [], 0
    for count, (hh, ww) in zip(counts, sizes_hw):
        members = order[start : start + count]
        start += count
        # Both the crop and the pooled output of a batch stay within the cache-sized budget.
        per_batch = max(1, _CPU_CHUNK_ELEMENTS // (max(hh * ww, kh * kw) * channels))
        for s in range(0, count, per_batch):
            idx = members[s : s + per_batch]
            cells = row_base[idx, :hh, None] + col[idx, None, :ww]  # [g, h, w]
            batches.append(_Batch(idx, cells.masked_fill_(cells < 0, outside_row)))
    return _Plan(
        tuple(batches), len(windows), output_size,
        max_rois=max((len(t.rois) for t in batches), default=0),
        max_cells=max((t.cells.numel() for t in batches), default=0),
        max_window=int((h * w).max()) if len(windows) else 1,
        empty=empty,
    )


def _table(input: Tensor, fill: float) -> Tensor:
    """The map as channel vectors [N*H*W + 1, C]; the last row (``fill``) stands for outside the map."""
    num_images, channels, height, width = input.shape
    table = input.new_empty(num_images * height * width + 1, channels)
    table[:-1].view(num_images, height, width, channels).copy_(input.permute(0, 2, 3, 1))
    table[-1] = fill
    return table


class _CropMaxPool(torch.autograd.Function):
    """forward(input [N, C, H, W], plan) -> [K, C, kh, kw]: crop each window, adaptive-max-pool it.

    Per batch: ``crop = table[cells]`` is [g, h, w, C], which read as [g, C, h, w] is channels-last,
    the layout ``adaptive_max_pool2d`` reduces fastest (vectorised over C). It returns the winner's
    flat index in the h x w window, kept in the smallest integer type that holds it (batches in plan
    order, one tensor). The backward scatters each output's gradient to its winner
    (``adaptive_max_pool2d_backward``, which reads only the shape of its ``self`` argument) and adds
    the window gradients to the map's cells (``index_add_`` of channel vectors). Buffers are
    allocated once and reused by every batch: fresh multi-MiB tensors per batch cost page faults.
    """

    @staticmethod
    def forward(ctx, input: Tensor, plan: _Plan) -> Tensor:
        kh, kw = plan.output_size
        channels, dtype, device = input.shape[1], input.dtype, input.device
        table = _table(input, float("-inf"))
        output = input.new_empty(plan.num_rois, channels, kh, kw)
        keep = ctx.needs_input_grad[0]  # the winners serve the backward only (none at inference)
        winners = channels_last_empty(plan.num_rois if keep else 0, channels, kh, kw, dtype=index_dtype(plan.max_window), device=device)
        crop_buf = input.new_empty(plan.max_cells * channels)
        pooled_buf = channels_last_empty(plan.max_rois, channels, kh, kw, dtype=dtype, device=device)
        index_buf = channels_last_empty(plan.max_rois, channels, kh, kw, dtype=torch.int64, device=device)
        done = 0
        for batch in plan.batches:
            g, hh, ww = batch.cells.shape
            crop = crop_buf[: g * hh * ww * channels].view(g * hh * ww, channels)
            torch.index_select(table, 0, batch.cells.reshape(-1), out=crop)
            crop = crop.view(g, hh, ww, channels).permute(0, 3, 1, 2)  # [g, C, h, w], channels-last
            pooled, winner = pooled_buf[:g], index_buf[:g]
            torch.ops.aten.adaptive_max_pool2d.out(crop, (kh, kw), out=pooled, indices=winner)
            output.index_copy_(0, batch.rois, pooled)
            if keep:
                winners[done : done + g] = winner
            done += g
        # A bin outside the map pooled -inf: it reads 0 (its winner is an outside cell, so its
        # gradient goes to the outside row and is dropped).
        output.permute(0, 2, 3, 1)[plan.empty] = 0
        ctx.plan, ctx.input_shape = plan, input.shape
        ctx.save_for_backward(winners)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        (winners,) = ctx.saved_tensors
        plan = ctx.plan
        num_images, channels, height, width = ctx.input_shape
        kh, kw = plan.output_size
        dtype, device = grad_output.dtype, grad_output.device
        grad_table = grad_output.new_zeros(num_images * height * width + 1, channels)
        grad_buf = channels_last_empty(plan.max_rois, channels, kh, kw, dtype=dtype, device=device)
        index_buf = channels_last_empty(plan.max_rois, channels, kh, kw, dtype=torch.int64, device=device)
        crop_buf = grad_output.new_empty(plan.max_cells * channels)
        rows = grad_output.permute(0, 2, 3, 1)  # [K, kh, kw, C]: gathers below come out channels-last
        done = 0
        for batch in plan.batches:
            g, hh, ww = batch.cells.shape
            grad = grad_buf[:g]
            torch.index_select(rows, 0, batch.rois, out=grad.permute(0, 2, 3, 1))
            winner = index_buf[:g].copy_(winners[done : done + g])
            done += g
            grad_crop = crop_buf[: g * hh * ww * channels].view(g, hh, ww, channels).permute(0, 3, 1, 2)
            torch.ops.aten.adaptive_max_pool2d_backward.grad_input(grad, grad_crop, winner, grad_input=grad_crop)
            grad_table.index_add_(0, batch.cells.reshape(-1), grad_crop.permute(0, 2, 3, 1).reshape(-1, channels))
        grad_input = grad_table[:-1].view(num_images, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return grad_input, None


def _pool_listed_bins(input: Tensor, windows: Tensor, output_size: tuple[int, int], dtype: torch.dtype) -> Tensor:
    """The round rule's bins with torchvision's floating-point edges: [K', C, kh, kw], autograd ops.

    Each bin lists the cells it reads, padded to the longest list with the outside-the-map row
    (-inf); the max over the list is the bin. Only the rare windows of the module docstring's
    exactness detail come here, so plain differentiable ops suffice.
    """
    kh, kw = output_size
    num_images, channels, height, width = input.shape
    b, y0, x0, h, w = windows.unbind(1)

    def edges(start: Tensor, length: Tensor, bins: int, size: int) -> tuple[Tensor, Tensor]:
        bin_size = length.to(dtype) / bins
        j = torch.arange(bins, device=input.device, dtype=dtype)
        lo = torch.floor(j * bin_size[:, None]).long() + start[:, None]
        hi = torch.ceil((j + 1) * bin_size[:, None]).long() + start[:, None]
        return lo.clamp(0, size), hi.clamp(0, size)  # [K', bins]

    ys, ye = edges(y0, h, kh, height)
    xs, xe = edges(x0, w, kw, width)
    th, tw = max(int((ye - ys).max()), 1), max(int((xe - xs).max()), 1)
    ty, tx = ys[..., None] + torch.arange(th, device=input.device), xs[..., None] + torch.arange(tw, device=input.device)
    inside = (ty < ye[..., None])[:, :, None, :, None] & (tx < xe[..., None])[:, None, :, None, :]
    cells = b[:, None, None, None, None] * (height * width) + ty[:, :, None, :, None] * width + tx[:, None, :, None, :]
    cells = torch.where(inside, cells, num_images * height * width).reshape(-1, th * tw)  # [K'*kh*kw, T]
    table = torch.cat([input.permute(0, 2, 3, 1).reshape(-1, channels), input.new_full((1, channels), float("-inf"))])
    pooled = F.embedding(cells, table).amax(1)  # [K'*kh*kw, C]
    pooled = pooled.masked_fill(~inside.flatten(3).any(-1).reshape(-1, 1), 0)  # an empty bin reads 0
    return pooled.view(len(windows), kh, kw, channels).permute(0, 3, 1, 2).contiguous()


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
