"""RoIPool (Fast R-CNN, Girshick 2015, section 2.1) with the two quantization rules of the seed.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, kh x kw: output size, B = kh * kw: bins per RoI
    U: distinct bin rectangles in the batch; u of them of one size, s cells each (s = rows * cols)

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

Both rules give every bin a rectangle of whole cells (rows ``[y_lo, y_hi)``, columns
``[x_lo, x_hi)``), clipped to the map; a bin whose clipped rectangle is empty reads 0 (as torchvision's
does). So RoIPool is a max over rectangles, and the rectangles repeat: at stride 32 a map has few
cells, bins are one to three cells wide, and the 50 176 bins of the benchmark's 1 024 RoIs are only
5 219 distinct rectangles. Computing each distinct rectangle once is the whole idea here.

Why hand-written on the CPU (on CUDA both rules run torchvision's kernel, the second on a rewritten
box): torchvision's CPU kernel is a serial loop over every output and every cell of its bin. Here:

1. plan -- every bin's rectangle as one integer key (its size, then its top-left cell), and
   ``torch.unique`` over the keys: the distinct rectangles, sorted by size, and each bin's rectangle.
2. forward -- the map laid out channels-last as a table ``[N*H*W, C]``; per rectangle size, a gather
   of each rectangle's cells ``[u, s, C]`` and ``amax`` over its s cells (vectorised over C), giving
   a table of rectangle maxima ``[U, C]``; then the output is that table's rows read back per bin
   (``index_select``) and turned to ``[K, C, kh, kw]`` in cache-sized chunks.
3. backward -- the output's gradient summed per rectangle (``index_add_`` of channel vectors into
   ``[U, C]``), then sent to each rectangle's winning cell per channel (``scatter_add_``).

The winner is the first maximal cell in row-major order, as in torchvision's scan (its ``>``, from
-FLT_MAX: a NaN cell never wins, and a bin with nothing above -FLT_MAX reads -FLT_MAX, no gradient);
``amax`` plus "first cell equal to the max" finds it about twice as fast as ``max(dim)`` with
indices (measured on the benchmark's rectangles). The winners are kept in 1 byte per rectangle and
channel when no rectangle of the call holds more than 255 cells (else 2 or 4 bytes).
``tools/benchmark.py ops`` measures all of this against torchvision's kernel.

One exactness detail: torchvision computes the round rule's bin edges in floating point,
``floor(j * (w / kw))`` and ``ceil((j + 1) * (w / kw))`` in the map's precision, which for a few window
sizes (for kw = 7 the first is w = 57 in float32, 29 in float64) differs by one cell from the exact
``floor(j * w / kw)``. The edges here are computed by the same formula in the same precision for
float32 and float64 maps, so they are torchvision's bins. Half-precision maps keep float32 geometry
(float16 holds integers exactly only up to 2048, bfloat16 up to 256), so their bins can differ from
those of torchvision's float16 CPU kernel (bfloat16 it does not run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torchvision.ops import roi_pool as _tv_roi_pool

from detector.ops._utils import BoxesType, boxes_to_rois, check_roi_inputs, index_dtype, pair, round_half_away
from detector.ops.dense import exporting, roi_pool_dense

_QUANTIZATIONS = ("round", "floor")

# One chunk on the CPU holds at most this many elements (1 MiB in float32, about one core's L2) -- of
# gathered rectangle cells, or of output rows on their way to [K, C, kh, kw]. Measured at the ops
# benchmark's shape (tools/benchmark.py ops, roi_pool f+b): 2^18 was 2-4 % faster than 2^17 or 2^19..2^22.
_CPU_CHUNK_ELEMENTS = 1 << 18


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
    if not exporting() and bool(((rois[:, 0] < 0) | (rois[:, 0] >= num_images)).any()):
        raise ValueError(
            f"boxes' batch indices must lie in [0, {num_images - 1}] (the input holds {num_images} "
            f"images), got {int(rois[:, 0].min())}..{int(rois[:, 0].max())}"
        )
    on_torchvision = uses_torchvision_kernel(input.device) and not exporting()
    if on_torchvision and quantization == "round":
        # torchvision's own rule: its kernel on the boxes as given (in float32 at least, as its
        # autocast wrapper runs it), without the window's dozen small launches.
        dtype = torch.promote_types(input.dtype, torch.float32)
        return _tv_roi_pool(input.to(dtype), rois.to(dtype), size, spatial_scale).to(input.dtype)
    with torch.no_grad():
        x0, y0, w, h = _window(rois, size, spatial_scale, quantization)
        if exporting():  # fixed shapes for an exported program (detector.ops.dense)
            return roi_pool_dense(input, *_bins(x0, y0, w, h, size, quantization), rois[:, 0].long())
    if on_torchvision:
        # The floor rule on torchvision's CUDA kernel, fed the window as a box in cell units: its
        # rounded width is then exactly w, and its bins are the ones computed below for the CPU.
        # In float32 at least: cell numbers above 256 are not integers in bfloat16 (2048 in float16),
        # and a max is exact through the round trip (rounding is monotonic).
        cells = torch.stack([rois[:, 0], x0, y0, x0 + w - 1, y0 + h - 1], dim=1)
        dtype = torch.promote_types(input.dtype, torch.float32)
        return _tv_roi_pool(input.to(dtype), cells.to(dtype), size, 1.0).to(input.dtype)

    with torch.no_grad():
        plan = _plan(rois[:, 0].long(), *_bins(x0, y0, w, h, size, quantization), input.shape)
    # The winners serve the backward only: none at inference, nor under torch.no_grad.
    return _RectangleMaxPool.apply(input, plan, torch.is_grad_enabled() and input.requires_grad)


def uses_torchvision_kernel(device: torch.device) -> bool:
    """Whether a call runs torchvision's kernel: on CUDA (one launch, where the window's rectangles
    would take a dozen small ones), not on the CPU (its serial loop is the slower one there,
    docs/operators.md). Both rules: the floor rule through a rewritten box."""
    return device.type == "cuda"


def _window(rois: Tensor, size: tuple[int, int], spatial_scale: float, quantization: str):
    """The pooled window of each RoI in whole cells: origin (x0, y0) and size (w, h), each [K]."""
    kh, kw = size
    if quantization == "round":
        x0, x1 = round_half_away(rois[:, 1] * spatial_scale), round_half_away(rois[:, 3] * spatial_scale)
        y0, y1 = round_half_away(rois[:, 2] * spatial_scale), round_half_away(rois[:, 4] * spatial_scale)
        return x0, y0, (x1 - x0 + 1).clamp(min=1), (y1 - y0 + 1).clamp(min=1)
    q = floor_quantize(rois, size, spatial_scale)
    return q[:, 1], q[:, 2], kw * q[:, 3], kh * q[:, 4]


def _bins(x0: Tensor, y0: Tensor, w: Tensor, h: Tensor, size: tuple[int, int], quantization: str):
    """Each bin's rows and columns ``[lo, hi)`` ([K, kh] and [K, kw] each) under the rule."""
    kh, kw = size
    if quantization == "round":
        return _float_bins(y0, h, kh), _float_bins(x0, w, kw)
    return _whole_bins(y0, h // kh, kh), _whole_bins(x0, w // kw, kw)


def _float_bins(start: Tensor, length: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """The round rule's bin edges [K, bins] in cells, in torchvision's floating point (module docstring)."""
    bin_size = (length / bins)[:, None]  # in the geometry's dtype, as torchvision's kernel computes it
    j = torch.arange(bins, device=length.device, dtype=length.dtype)
    base = start.long()[:, None]
    return base + torch.floor(j * bin_size).long(), base + torch.ceil((j + 1) * bin_size).long()


def _whole_bins(start: Tensor, bin_size: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """The floor rule's bin edges [K, bins]: ``bins`` bins of exactly ``bin_size`` cells."""
    lo = start.long()[:, None] + torch.arange(bins, device=start.device) * bin_size.long()[:, None]
    return lo, lo + bin_size.long()[:, None]


@dataclass(frozen=True)
class _Group:
    """Distinct rectangles of one size: rows ``start .. start + len(cells)`` of the maxima table."""

    start: int
    cells: Tensor  # int64 [u, s]: each rectangle's cells as table rows, row-major


@dataclass(frozen=True)
class _Plan:
    """What :class:`_RectangleMaxPool` computes, from the boxes alone."""

    rectangle: Tensor  # int64 [K * B]: each bin's row in the maxima table
    groups: tuple[_Group, ...]
    num_rectangles: int  # U (an empty rectangle, if any bin has one, is row 0 and reads 0)
    output_size: tuple[int, int]
    max_cells: int  # s of the largest rectangle: the winners' index range


def _plan(batch: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor], input_shape: torch.Size) -> _Plan:
    """Each bin's rectangle, clipped to the map, and the distinct rectangles grouped by size.

    A rectangle's key is ``size * N*H*W + top-left table row`` with ``size = rows * (W + 1) + cols``,
    so ``torch.unique`` (which sorts) returns the distinct rectangles already grouped by size. An empty
    bin's key is -1: it sorts first and becomes the one rectangle of size 0 (row 0, value 0).
    """
    num_images, channels, height, width = input_shape
    device = batch.device
    (y_lo, y_hi), (x_lo, x_hi) = rows, cols
    y_lo, y_hi, x_lo, x_hi = y_lo.clamp(0, height), y_hi.clamp(0, height), x_lo.clamp(0, width), x_hi.clamp(0, width)
    cells = num_images * height * width
    corner = (batch[:, None, None] * height + y_lo[:, :, None]) * width + x_lo[:, None, :]  # [K, kh, kw]
    size = (y_hi - y_lo)[:, :, None] * (width + 1) + (x_hi - x_lo)[:, None, :]
    empty = (y_hi <= y_lo)[:, :, None] | (x_hi <= x_lo)[:, None, :]
    key = torch.where(empty, -1, size * cells + corner).view(-1)
    keys, rectangle = torch.unique(key, return_inverse=True)
    sizes, counts = torch.unique_consecutive(torch.where(keys < 0, 0, keys // cells), return_counts=True)
    groups, start = [], 0
    offsets = torch.arange(height, device=device)[:, None] * width + torch.arange(width, device=device)
    for size, count in zip(sizes.tolist(), counts.tolist()):
        rh, rw = divmod(size, width + 1)
        if rh * rw > 0:
            top_left = keys[start : start + count] % cells
            groups.append(_Group(start, top_left[:, None] + offsets[:rh, :rw].reshape(1, -1)))
        start += count
    return _Plan(
        rectangle, tuple(groups), len(keys), (rows[0].shape[1], cols[0].shape[1]),
        max_cells=max((g.cells.shape[1] for g in groups), default=1),
    )


class _RectangleMaxPool(torch.autograd.Function):
    """forward(input [N, C, H, W], plan) -> [K, C, kh, kw]: the max of each bin's rectangle.

    The maxima table ``[U, C]`` is computed once per distinct rectangle, then read by every bin that
    has it. The backward sums the bins' gradients per rectangle and sends each sum to the winner.
    """

    @staticmethod
    def forward(ctx, input: Tensor, plan: _Plan, keep: bool) -> Tensor:
        kh, kw = plan.output_size
        bins = kh * kw
        num_rois = plan.rectangle.numel() // bins
        num_images, channels, height, width = input.shape
        # The map channels-last (one small copy), under torchvision's scan: its max starts at -FLT_MAX
        # and a cell wins only if strictly greater, so a NaN never wins, a bin of cells at or below
        # -FLT_MAX reads -FLT_MAX and sends no gradient (``dead`` below).
        table = input.new_empty(num_images, height, width, channels)
        torch.nan_to_num(input.permute(0, 2, 3, 1), nan=-math.inf, posinf=math.inf, neginf=-math.inf, out=table)
        floor = torch.tensor(-torch.finfo(torch.float32).max, dtype=input.dtype).item()  # -inf in float16
        table = table.view(-1, channels).clamp_(min=floor)
        maxima = input.new_zeros(plan.num_rectangles, channels)  # the empty rectangle, if any, stays 0
        win_dtype = index_dtype(plan.max_cells + 1)  # +1: the rank below counts down from s
        winners = torch.zeros((plan.num_rectangles if keep else 0, channels), dtype=win_dtype, device=input.device)
        for group in plan.groups:
            u, s = group.cells.shape
            # s counts down to 1 along the cells: the largest rank among the maximal cells is the first.
            rank = torch.arange(s, 0, -1, dtype=win_dtype, device=input.device)[None, :, None]
            per = max(1, _CPU_CHUNK_ELEMENTS // (s * channels))
            for a in range(0, u, per):
                cells = group.cells[a : a + per]
                crop = table.index_select(0, cells.reshape(-1)).view(len(cells), s, channels)
                rows = slice(group.start + a, group.start + a + len(cells))
                torch.amax(crop, dim=1, out=maxima[rows])
                if keep and s == 2:  # the second cell wins only if strictly larger (torchvision's >)
                    torch.gt(crop[:, 1], crop[:, 0], out=winners[rows])
                elif keep and s > 2:
                    first = ((crop == maxima[rows, None]) * rank).amax(1)
                    torch.sub(s, first, out=winners[rows]).clamp_(max=s - 1)  # a NaN max equals no cell
        output = input.new_empty(num_rois, channels, kh, kw)
        flat = output.view(num_rois, channels, bins)
        per = max(1, _CPU_CHUNK_ELEMENTS // (bins * channels))
        buffer = input.new_empty(min(per, num_rois) * bins, channels)
        for a in range(0, num_rois, per):
            g = min(per, num_rois - a)
            rows = buffer[: g * bins]
            torch.index_select(maxima, 0, plan.rectangle[a * bins : (a + g) * bins], out=rows)
            flat[a : a + g].copy_(rows.view(g, bins, channels).transpose(1, 2))
        dead = None
        if keep:
            at_floor = maxima == floor  # (the empty rectangle's 0 never is)
            dead = at_floor if bool(at_floor.any()) else None
        ctx.plan, ctx.input_shape, ctx.dead = plan, input.shape, dead
        ctx.save_for_backward(winners)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        (winners,) = ctx.saved_tensors
        plan = ctx.plan
        num_images, channels, height, width = ctx.input_shape
        num_rois = grad_output.shape[0]
        bins = plan.rectangle.numel() // max(num_rois, 1)
        flat = grad_output.reshape(num_rois, channels, bins)
        per_rectangle = grad_output.new_zeros(plan.num_rectangles, channels)
        per = max(1, _CPU_CHUNK_ELEMENTS // (bins * channels))
        buffer = grad_output.new_empty(min(per, num_rois) * bins, channels)
        for a in range(0, num_rois, per):
            g = min(per, num_rois - a)
            rows = buffer[: g * bins]
            rows.view(g, bins, channels).copy_(flat[a : a + g].transpose(1, 2))
            per_rectangle.index_add_(0, plan.rectangle[a * bins : (a + g) * bins], rows)
        if ctx.dead is not None:
            per_rectangle.masked_fill_(ctx.dead, 0)
        grad_table = grad_output.new_zeros(num_images * height * width, channels)
        for group in plan.groups:
            u, s = group.cells.shape
            grads = per_rectangle[group.start : group.start + u]
            if s == 1:
                grad_table.index_add_(0, group.cells.view(-1), grads)
            else:
                target = group.cells.gather(1, winners[group.start : group.start + u].long())  # [u, C] table rows
                grad_table.scatter_add_(0, target, grads)
        grad_input = grad_table.view(num_images, height, width, channels).permute(0, 3, 1, 2).contiguous()
        return grad_input, None, None


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
