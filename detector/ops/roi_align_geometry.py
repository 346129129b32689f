"""Where RoIAlign samples, and which cells each sample reads with which weight (no feature values).

Shape shorthand:
    K: RoIs, kh x kw: output bins, n: sampling points per bin side (per RoI when adaptive)
    A x B: rows x columns per RoI (kh x kw bins for avg; kh*n x kw*n samples for max)
    T: taps (cells read) per row; size: the feature map's length along one axis

Everything here is geometry: RoIs in feature cells, bins, sample positions (the seed's points), and
the bilinear interpolation weights that turn them into a sparse map from cells to output rows.
:mod:`detector.ops.sparse_map` applies that map to features; :mod:`detector.ops.roi_align` is the
public API that joins the two.

Bilinear weights are separable: a sample at (y, x) reads its (at most) two neighbouring rows with
``wy`` and its two neighbouring columns with ``wx``, and cell (r, c) with ``wy[r] * wx[c]``. So each
axis is computed on its own (``axis_weights`` [K, bins, n, size]), reduced to the few cells each
output row reads (``taps`` [K, A, T]), and only then combined (``tap_products`` [K*A*B, Ty*Tx]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.ops._utils import pair

LAYOUTS = ("centered", "interior")


@dataclass(frozen=True)
class RoIGeometry:
    """K RoIs in feature cells (index space: cell c spans [c, c + 1)) and their sampling grids."""

    batch_idx: Tensor  # int64 [K]
    x1: Tensor  # [K] start along x (after the half-cell shift of ``aligned``)
    y1: Tensor  # [K]
    bin_w: Tensor  # [K] bin size along x, in cells
    bin_h: Tensor  # [K]
    grid_w: Tensor  # int64 [K] samples per bin along x (0: the RoI has no sample)
    grid_h: Tensor  # int64 [K]

    def select(self, idx: Tensor) -> "RoIGeometry":
        return RoIGeometry(*(t[idx] for t in (self.batch_idx, self.x1, self.y1, self.bin_w, self.bin_h, self.grid_w, self.grid_h)))

    @property
    def uniform_grid(self) -> bool:
        """Whether every RoI samples the same n_h x n_w grid (always, with a fixed sampling ratio)."""
        return bool((self.grid_w == self.grid_w[0]).all()) and bool((self.grid_h == self.grid_h[0]).all())

    def grid_groups(self) -> list[Tensor]:
        """The RoIs (indices [Kg]) of each distinct (n_h, n_w) grid, in increasing grid order."""
        stride = int(self.grid_w.max()) + 1
        key = self.grid_h * stride + self.grid_w
        return [torch.nonzero(key == k).squeeze(1) for k in torch.unique(key).tolist()]


def roi_geometry(
    rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool
) -> RoIGeometry:
    """[K, 5] RoIs (batch, x1, y1, x2, y2 in input pixels) -> their bins and grids in feature cells.

    torchvision's rules: ``aligned`` shifts by -0.5 cell (so a point at continuous c + 0.5 reads cell c,
    as the seed's FM(9.5, 6.5) does); without it RoIs are at least one cell wide. An adaptive grid
    (``sampling_ratio <= 0``) is ceil(RoI size / bins); an inverted box (x2 < x1 with ``aligned``)
    has no sample, like a zero-size one.
    """
    kh, kw = output_size
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_w = torch.full((rois.shape[0],), sampling_ratio, dtype=torch.int64, device=rois.device)
        grid_h = grid_w
    else:
        grid_w = torch.ceil(roi_w / kw).long().clamp(min=0)
        grid_h = torch.ceil(roi_h / kh).long().clamp(min=0)
    return RoIGeometry(rois[:, 0].long(), x1, y1, roi_w / kw, roi_h / kh, grid_w, grid_h)


def sample_positions(start: Tensor, bin_size: Tensor, grid: Tensor, n_max: int, bins: int, layout: str) -> Tensor:
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
    if sample_layout not in LAYOUTS:  # a typo would otherwise draw the centred points
        raise ValueError(f"sample_layout must be one of {LAYOUTS}, got {sample_layout!r}")
    rois = torch.tensor([[0.0, *box]], dtype=torch.float64)
    g = roi_geometry(rois, pair(output_size), spatial_scale, sampling_ratio, aligned)
    kh, kw = pair(output_size)
    # In continuous units the -0.5 shift of ``aligned`` and the +0.5 to reach a cell's centre cancel;
    # without ``aligned`` the op reads cell c's value at c (half a cell off the seed's convention).
    shift = 0.0 if aligned else 0.5
    unshift = 0.5 if aligned else 0.0  # roi_geometry's own shift, undone
    xs = sample_positions(g.x1 + unshift, g.bin_w, g.grid_w, sampling_ratio, kw, sample_layout)
    ys = sample_positions(g.y1 + unshift, g.bin_h, g.grid_h, sampling_ratio, kh, sample_layout)
    return xs.reshape(-1) + shift, ys.reshape(-1) + shift


def axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, n_max: int, bins: int, size: int, layout: str) -> Tensor:
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
    coord = sample_positions(start, bin_size, grid, n_max, bins, layout)  # [K, bins, n_max]

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


def bin_average(weights: Tensor, grid: Tensor) -> Tensor:
    """[K, bins, n_max, size] per-sample weights -> [K, bins, size]: each bin's mean over its own samples.

    A bin then reads each cell once, with the summed weight of all its samples (torchvision divides
    the sum by max(n_h * n_w, 1); separably, each axis by its own grid). The samples beyond a RoI's
    grid have weight 0 already, so the sum is over the RoI's own samples.
    """
    return weights.sum(2) / grid.clamp(min=1).to(weights.dtype)[:, None, None]


def taps(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Dense interpolation weights along one axis -> the few cells each row reads, and their weights.

    [K, R, size] -> [K, R, T], T the most nonzero weights any row has (at most 2 for a sample; the
    cells its samples touch for an avg bin). A row with fewer reads some cells with weight 0.
    """
    nonzero = (weights != 0).to(torch.uint8)
    t = max(int(nonzero.sum(-1).max()), 1)
    cells = nonzero.topk(t, dim=-1).indices  # the nonzero cells first, in any order
    return cells, weights.gather(-1, cells)


def tap_products(row: Tensor, col: Tensor, op) -> Tensor:
    """[K, A, Ty] and [K, B, Tx] -> [K*A*B, Ty*Tx]: ``op`` of every row tap with every column tap.

    Spelled out in two steps so that the large op runs with a contiguous inner axis of Ty*Tx: a
    one-step broadcast over [K, A, B, Ty, Tx] runs 6x slower on the CPU (inner axes of 2).
    """
    (num_rois, a, ty), (b, tx) = row.shape, col.shape[1:]
    row = row[:, :, :, None].expand(num_rois, a, ty, tx).reshape(num_rois, a, 1, ty * tx)
    col = col[:, :, None, :].expand(num_rois, b, ty, tx).reshape(num_rois, 1, b, ty * tx)
    return op(row, col).reshape(num_rois * a * b, ty * tx)
