"""The RoI operators as fixed-shape tensor algebra, for exported programs (torch.export, ONNX).

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs, kh x kw: output size, n: sampling points per bin side (the largest any RoI can need)

The eager operators (:mod:`detector.ops.roi_align`, :mod:`detector.ops.roi_pool`) are fast because
they plan their work from the boxes: which cells each bin reads, how many distinct rectangles there
are, how large a chunk fits in cache. Every one of those decisions is a Python value computed from
tensor data, which an exported program cannot contain (its shapes must not depend on the boxes).
Here the same mathematics is written with every shape known from the map and the output size alone:

* RoIAlign: the separable interpolation weights of :func:`detector.ops.roi_align_geometry.axis_weights`
  as dense matrices ([K, kh, n, H] and [K, kw, n, W]) and two contractions with the map. An adaptive
  grid (``sampling_ratio <= 0``) uses the largest grid a box inside the map (plus one cell) can have,
  ``ceil((H + 1) / kh)`` by ``ceil((W + 1) / kw)`` samples, with the samples beyond each RoI's own grid weighted 0
  (avg) or excluded (max) -- the same samples as the eager op, summed in another order.
* RoIPool: each bin's rectangle of whole cells from the eager op's own rules (``round`` and
  ``floor``), and a separable masked max: over the columns of each bin, then over its rows.
* RoIWarp: RoIPool's snapped box, then the dense RoIAlign above.

These run only inside an export (see :func:`exporting`); they equal the eager operators to float
rounding (tests/ops/test_dense.py), and so do their ONNX translations in onnxruntime, every mode, with
the map size and the number of RoIs free (tests/export/test_onnx_operators.py). Exporting an operator
alone with a free map size, the max over an adaptive grid needs ``torch.export.export(...,
prefer_deferred_runtime_asserts_over_guards=True)``: its reshapes of [K, kh, n, H] with ``n`` a function
of H raise facts such as ``3 % (3 n) != 0`` that hold for every n >= 2 but that the shape solver cannot
prove, so they must become checks inside the program. The detector's export needs no flag.

No library has these: torchvision's ONNX translations cover its own roi_align (avg, centered samples)
and roi_pool (round) only, not the seed's max reduction, interior points or floor rule, and
substituting them would silently change the model being exported.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detector.ops.roi_align_geometry import axis_weights, bin_average, roi_geometry

__all__ = ["exporting", "pad_indices", "roi_align_dense", "roi_pool_dense"]


def exporting() -> bool:
    """Whether the caller is being traced by torch.export (or the ONNX exporter built on it)."""
    return torch.compiler.is_exporting()


def pad_indices(keep: Tensor, length: int) -> Tensor:
    """The first ``length`` of ``keep`` (indices of data-dependent count, e.g. NMS's), padded with -1 to
    exactly ``length``: the fixed shape an exported program can carry on."""
    return torch.cat([keep, keep.new_full((length,), -1)])[:length]


def _per_image(weights_y: Tensor, input: Tensor, weights_x: Tensor, batch_idx: Tensor) -> Tensor:
    """out[k, c, a, b] = sum_{h, w} wy[k, a, h] * input[batch_idx[k], c, h, w] * wx[k, b, w].

    The image of each RoI is picked by a one-hot contraction instead of an index, so that a batch of
    one image (what the exported detector runs) costs nothing extra.
    """
    num_images = input.shape[0]
    one_hot = (batch_idx[:, None] == torch.arange(num_images, device=input.device)[None]).to(input.dtype)  # [K, N]
    rows = torch.einsum("kah,nchw->kncaw", weights_y, input)  # [K, N, C, A, W]
    rows = torch.einsum("kn,kncaw->kcaw", one_hot, rows)  # [K, C, A, W]
    return torch.einsum("kcaw,kbw->kcab", rows, weights_x)  # [K, C, A, B]


def roi_align_dense(
    input: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    reduction: str = "avg",
    sample_layout: str = "centered",
) -> Tensor:
    """:func:`detector.ops.roi_align` on [K, 5] ``rois``, in fixed shapes -> [K, C, kh, kw].

    With an adaptive grid the RoIs must lie inside the map plus one cell (a proposal clipped to its image does):
    a larger RoI would need more samples than the fixed grid holds.
    """
    kh, kw = output_size
    height, width = input.shape[-2:]
    rois = rois.to(torch.promote_types(input.dtype, torch.float32))
    g = roi_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned)
    if sampling_ratio > 0:
        n_h = n_w = int(sampling_ratio)
    else:
        # The largest grid of a box inside the map, plus one cell: RoIWarp's snapped box can reach it.
        # At least 2 (a masked sample at most): with a symbolic map size, a size that could be 1 makes
        # torch.export guard on it (broadcasting rules differ for 1) and refuse the small maps.
        n_h, n_w = torch.sym_max((height + kh) // kh, 2), torch.sym_max((width + kw) // kw, 2)  # ceil((size + 1) / k)
        g = type(g)(g.batch_idx, g.x1, g.y1, g.bin_w, g.bin_h, g.grid_w.clamp(max=n_w), g.grid_h.clamp(max=n_h))
    wx = axis_weights(g.x1, g.bin_w, g.grid_w, n_w, kw, width, sample_layout)  # [K, kw, n_w, W]
    wy = axis_weights(g.y1, g.bin_h, g.grid_h, n_h, kh, height, sample_layout)  # [K, kh, n_h, H]
    num_rois = rois.shape[0]
    if reduction == "avg":
        wx, wy = bin_average(wx, g.grid_w), bin_average(wy, g.grid_h)
        return _per_image(wy.to(input.dtype), input, wx.to(input.dtype), g.batch_idx)
    # max: every sample, then the max over each bin's own samples (those beyond its grid excluded).
    samples = _per_image(wy.reshape(num_rois, kh * n_h, height).to(input.dtype), input,
                         wx.reshape(num_rois, kw * n_w, width).to(input.dtype), g.batch_idx)
    samples = samples.reshape(num_rois, input.shape[1], kh, n_h, kw, n_w)  # (no -1: a divisibility guard)
    in_grid_h = torch.arange(n_h, device=input.device)[None] < g.grid_h[:, None]  # [K, n_h]
    in_grid_w = torch.arange(n_w, device=input.device)[None] < g.grid_w[:, None]  # [K, n_w]
    in_grid = (in_grid_h[:, None, None, :, None, None] & in_grid_w[:, None, None, None, None, :])
    low = torch.finfo(input.dtype).min
    pooled = torch.where(in_grid, samples, torch.full_like(samples, low)).amax(dim=(3, 5))
    # An RoI without samples (zero-size with ``aligned``) reads 0, as the eager op.
    has_samples = ((g.grid_h > 0) & (g.grid_w > 0))[:, None, None, None]
    return torch.where(has_samples, pooled, torch.zeros_like(pooled))


def roi_pool_dense(input: Tensor, rows: tuple[Tensor, Tensor], cols: tuple[Tensor, Tensor], batch_idx: Tensor) -> Tensor:
    """The max over each bin's rectangle of whole cells -> [K, C, kh, kw].

    Args:
        rows, cols: each bin's rows ``[lo, hi)`` ([K, kh] each) and columns ``[lo, hi)`` ([K, kw]),
            as the eager op computes them (unclipped: clipped here to the map).
        batch_idx: int64 [K].

    A range-maximum table (the "sparse table" of range-minimum queries): ``T[a, b, y, x]`` is the max
    over the 2^a x 2^b cells from (y, x). A rectangle of h x w cells is covered by four such blocks
    with 2^a <= h < 2^(a+1) and 2^b <= w < 2^(b+1), so every bin is four lookups, whatever the map
    size (which may be symbolic in an exported program). The table holds levels x levels copies of
    the map: small at stride 32.

    NaN cells never win and a bin with nothing above the dtype's lowest value reads that value, as
    the eager op's scan from -FLT_MAX; an empty bin (clipped away) reads 0.
    """
    num_images, channels, height, width = input.shape
    low = torch.finfo(input.dtype).min
    finite = torch.nan_to_num(input, nan=low, posinf=math.inf, neginf=low).clamp(min=low)
    levels = _LEVELS if not isinstance(height, int) or not isinstance(width, int) else max(height, width, 1).bit_length()
    table = _range_max(_range_max(finite.permute(0, 2, 3, 1), 2, levels, low), 2, levels, low)  # over x, then y
    # table: [Ly, Lx, N, H, W, C] (the second pass stacked its levels in front of the first's)
    (y_lo, y_hi), (x_lo, x_hi) = rows, cols
    y_lo, y_hi = y_lo.clamp(0, height), y_hi.clamp(0, height)
    x_lo, x_hi = x_lo.clamp(0, width), x_hi.clamp(0, width)
    a, b = _level(y_hi - y_lo, levels), _level(x_hi - x_lo, levels)  # [K, kh], [K, kw]
    ys = (y_lo.clamp(max=height - 1), (y_hi - (1 << a)).clamp(min=0))
    xs = (x_lo.clamp(max=width - 1), (x_hi - (1 << b)).clamp(min=0))
    n = batch_idx.long()[:, None, None]
    pooled = None
    for y in ys:
        for x in xs:
            block = table[a[:, :, None], b[:, None, :], n, y[:, :, None], x[:, None, :]]  # [K, kh, kw, C]
            pooled = block if pooled is None else torch.maximum(pooled, block)
    empty = (y_hi <= y_lo)[:, :, None] | (x_hi <= x_lo)[:, None, :]  # [K, kh, kw]
    pooled = torch.where(empty[..., None], torch.zeros_like(pooled), pooled)
    return pooled.permute(0, 3, 1, 2)


# Table levels when the map's size is symbolic: bins of up to 2^9 - 1 = 511 cells (16 352 pixels at stride 32).
_LEVELS = 9


def _range_max(x: Tensor, dim: int, levels: int, low: float) -> Tensor:
    """[..., S, ...] -> [levels, ..., S, ...]: level l holds the max over 2^l cells from each cell along ``dim``."""
    size = x.shape[dim]
    out = [x]
    for level in range(1, levels):
        step = 1 << (level - 1)
        prev = out[-1]
        pad = [0, 0] * (x.dim() - 1 - dim) + [0, step]  # cells past the end read the lowest value
        shifted = torch.nn.functional.pad(prev, pad, value=low).narrow(dim, step, size)
        out.append(torch.maximum(prev, shifted))
    return torch.stack(out)


def _level(length: Tensor, levels: int) -> Tensor:
    """floor(log2(length)) for lengths >= 1 (0 for an empty bin), in integer comparisons."""
    powers = 1 << torch.arange(1, levels, device=length.device)
    return (length[..., None] >= powers).sum(-1)
