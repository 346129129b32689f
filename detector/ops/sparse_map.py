"""The sparse-map autograd kernel of RoIAlign: out rows = weighted sums of channel vectors.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs, A x B: rows x columns per RoI, T: taps per row
    n_h x n_w: samples per bin (the max reduction's window)

RoIAlign is *linear* in the feature map: a sample is the bilinear interpolation of (at most) four
cells, and a bin's average is a weighted sum of the few cells its samples touch. With the map laid
out channels-last as a table ``map [N*H*W, C]``,

    out[r, :] = sum_t weights[r, t] * map[cells[r, t], :]       (r: one bin, or one sample for max)

which is exactly ``F.embedding_bag`` with per-sample weights: a gather of whole channel vectors,
vectorised over C. ``cells`` and ``weights`` come from :mod:`detector.ops.roi_align_geometry`.

    avg:  one row per bin (its samples already folded into the bin's taps).
    max:  one row per sample, then ``max_pool2d`` over each bin's n_h x n_w samples; its gradient
          goes to the winning sample, and on to that sample's four cells.
    samples:  one row per sample, returned as they are (``roi_align_samples``).

The backward is the transposed map: each cell sums weight * gradient over the taps that read it,
which is the same op once the taps are grouped by cell (:func:`taps_by_cell`). Both passes run over
cache-sized chunks of RoIs on the CPU (:func:`plan_chunks`). Memory: no [K, C, H, W] intermediate;
besides the output and the map-sized gradient, the largest tensors are one chunk's samples and,
kept for the backward, the taps ([K*A*B, T] indices and weights) and max's winners (1 byte per
output when A*B <= 256); the backward briefly holds the taps sorted by cell (3-4x the saved taps).
Gradients flow to ``input`` only (boxes are treated as constants, as in torchvision).

Half-precision maps (bf16 under autocast) are pooled as they are, with no float32 copy of the map or
of the output: the taps' weights stay float32 (the geometry's dtype) and are rounded to the map's
dtype chunk by chunk for the gather, and the backward accumulates in float32 and rounds the map's
gradient once at the end (a cell sums the taps of many RoIs; bf16 sums would lose digits at each).
The output then differs from float32 pooling rounded to bf16 by about one bf16 rounding more
(docs/precision.md gives the measured error; tests/ops/test_roi_align.py bounds it).

Why hand-written: no library offers the max reduction or the seed's interior layout, on CPU or GPU;
this formulation is also several times faster than torchvision's CPU kernel (``tools/benchmark.py ops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from detector.ops._utils import channels_last_empty, index_dtype

# One chunk of RoIs on the CPU holds at most this many elements of samples (4 MiB in float32;
# a single RoI with more samples is a chunk of its own):
# small enough to stay in cache between the gather, the pooling and the copy out, large enough to
# keep Python's per-chunk overhead small. Measured at the training shape (tools/benchmark.py ops,
# max f+b): 1 Mi elements (10 RoIs for max, 41 for avg) beat 0.25, 0.5, 2 and 4 Mi.
CPU_CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class SparseMapPlan:
    """What :class:`SparseRoIAlign` computes beyond its tensors."""

    a: int  # rows per RoI: output rows (avg), or sample rows (max, every sample)
    b: int  # columns per RoI, likewise
    kernel: tuple[int, int] | None  # max over (n_h, n_w) samples per bin; None: the rows are the output
    rois_per_chunk: int  # RoIs per chunk (all of them on a GPU)
    num_chunks: int


class SparseRoIAlign(torch.autograd.Function):
    """RoIAlign as a sparse linear map of the channels-last map, with its own backward.

    forward(input [N, C, H, W], cells [K*A*B, T], weights [K*A*B, T] (float32 or float64), plan)
        -> [K, C, A / n_h, B / n_w] for max, [K, C, A, B] otherwise (avg: kh x kw; every sample)

    Row r of the output (or of the samples) is ``sum_t weights[r, t] * map[cells[r, t], :]`` with
    ``map`` the input as [N*H*W, C]: an ``embedding_bag`` with per-sample weights, which gathers and
    sums whole channel vectors at once (vectorised over C). The backward is the transposed map,
    ``grad_map[cell] = sum over the taps that read it of weight * grad_row``: the same op with the
    taps grouped by cell (one sort), see ``taps_by_cell``.

    max: the samples of a chunk of RoIs come out channels-last, which is the layout ``max_pool2d``
    reduces fastest (vectorised over channels); its window (n_h, n_w) is one bin's samples. The
    forward keeps only the winning sample's index per output, and the backward rebuilds each chunk's
    sample gradient from it, so n_h * n_w times the output never stays alive. Chunks keep the samples
    in cache on the CPU (``_CPU_CHUNK_ELEMENTS``); on a GPU one chunk is best.
    """

    @staticmethod
    def forward(ctx, input: Tensor, cells: Tensor, weights: Tensor, plan: SparseMapPlan) -> Tensor:
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
            winner = channels_last_empty(num_rois, channels, a // n_h, b // n_w, dtype=index_dtype(a * b), device=input.device)
            # Buffers reused by every chunk: fresh ones per chunk cost more in page faults than the
            # pooling itself (measured at the training shape).
            size = (plan.rois_per_chunk, channels, a // n_h, b // n_w)
            pooled_buf = channels_last_empty(*size, dtype=input.dtype, device=input.device)
            idx_buf = channels_last_empty(*size, dtype=torch.int64, device=input.device)
        for s, e in chunks(num_rois, plan.rois_per_chunk):
            rows = slice(s * a * b, e * a * b)
            samples = F.embedding_bag(cells[rows], table, per_sample_weights=weights[rows].to(table.dtype), mode="sum")
            samples = samples.view(e - s, a, b, channels).permute(0, 3, 1, 2)  # [ck, C, A, B], channels-last
            if plan.kernel is None:
                output[s:e] = samples
                continue
            pooled, idx = pooled_buf[: e - s], idx_buf[: e - s]
            torch.ops.aten.max_pool2d_with_indices.out(samples, plan.kernel, plan.kernel, (0, 0), (1, 1), False, out=pooled, indices=idx)
            output[s:e] = pooled
            winner[s:e] = idx
        ctx.save_for_backward(cells, weights, winner)
        ctx.plan, ctx.input_shape, ctx.input_dtype = plan, input.shape, input.dtype
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        cells, weights, winner = ctx.saved_tensors
        plan = ctx.plan
        num_images, channels, height, width = ctx.input_shape
        a, b, taps = plan.a, plan.b, cells.shape[1]
        rows_per_chunk = plan.rois_per_chunk * a * b
        acc = weights.dtype  # at least float32: the sums run in it, whatever the map's dtype
        # Buffers reused by every chunk (fresh ones per chunk cost more in page faults than the rest
        # of the backward pass), channels-last like the samples.
        grad_buf = channels_last_empty(plan.rois_per_chunk, *grad_output.shape[1:], dtype=acc, device=grad_output.device)
        if plan.kernel:
            idx_buf = channels_last_empty(plan.rois_per_chunk, *grad_output.shape[1:], dtype=torch.int64, device=grad_output.device)
            samples_buf = channels_last_empty(plan.rois_per_chunk, channels, a, b, dtype=acc, device=grad_output.device)
        bags = taps_by_cell(cells, weights, rows_per_chunk, plan.num_chunks, num_images * height * width)
        grad_map = grad_output.new_zeros(num_images * height * width, channels, dtype=acc)
        for i, (s, e) in enumerate(chunks(grad_output.shape[0], plan.rois_per_chunk)):
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
        grad_input = grad_map.view(num_images, height, width, channels).permute(0, 3, 1, 2)
        return grad_input.to(ctx.input_dtype, memory_format=torch.contiguous_format), None, None, None


@dataclass(frozen=True)
class TapsByCell:
    """The forward's taps grouped by (chunk, cell): the backward's bags. See :func:`taps_by_cell`."""

    rows: Tensor  # [K*A*B*T]: the row of each sorted tap, counted from its chunk's first row
    weights: Tensor  # [K*A*B*T]: its weight
    offsets: Tensor  # [bags]: where each (chunk, cell) bag starts, counted from its chunk's first tap
    cells: Tensor  # [bags]: the cell each bag belongs to
    first_bag: list[int]  # chunk i's bags are first_bag[i] .. first_bag[i + 1] - 1

    def chunk_bags(self, i: int) -> slice:
        return slice(self.first_bag[i], self.first_bag[i + 1])


def taps_by_cell(cells: Tensor, weights: Tensor, rows_per_chunk: int, num_chunks: int, num_cells: int) -> TapsByCell:
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
    return TapsByCell(
        rows=order // taps % rows_per_chunk,
        weights=weights.reshape(-1)[order],
        offsets=torch.cumsum(bag_size, 0) - bag_size - bag_chunk * taps_per_chunk,
        cells=(bag_key - bag_chunk * num_cells).long(),
        first_bag=[0, *first_bag],
    )


def chunks(num_rois: int, rois_per_chunk: int):
    """(start, end) over the RoIs, ``rois_per_chunk`` at a time."""
    for s in range(0, num_rois, rois_per_chunk):
        yield s, min(s + rois_per_chunk, num_rois)


def plan_chunks(
    num_rois: int, a: int, b: int, kernel: tuple[int, int] | None, *, channels: int, taps: int,
    num_cells: int, device: torch.device,
) -> tuple[SparseMapPlan, torch.dtype]:
    """How the kernel walks the RoIs, and the index dtype its taps fit in.

    On the CPU a chunk holds at most :data:`CPU_CHUNK_ELEMENTS` samples; on a GPU one chunk is best.
    int32 indices where every index fits (the backward's (chunk, cell) keys, the tap count): half
    the memory traffic, and the backward's sort runs 2x faster.
    """
    rois_per_chunk = num_rois
    if device.type == "cpu":
        rois_per_chunk = min(max(1, CPU_CHUNK_ELEMENTS // (a * b * channels)), num_rois)
    num_chunks = -(-num_rois // rois_per_chunk)
    fits = max(num_chunks * num_cells, num_rois * a * b * taps) < 2**31
    return SparseMapPlan(a, b, kernel, rois_per_chunk, num_chunks), (torch.int32 if fits else torch.int64)
