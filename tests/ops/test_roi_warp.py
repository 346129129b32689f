"""RoIWarp: RoIPool's rounded RoI, bilinear samples inside it (Mask R-CNN Table 2c, middle row)."""

from __future__ import annotations

import pytest
import torch

from detector.ops import RoIWarp, roi_align, roi_pool, roi_warp
from detector.ops.roi_warp import quantize_rois

STRIDE = 32


def _linear_map(h=8, w=8):
    """f = column + 10 * row at each cell centre: bilinear interpolation reproduces it exactly."""
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return (c + 10 * r)[None, None]


def test_the_seeds_roi_is_rounded_as_roipool_rounds_it():
    # x1 = 300 / 32 = 9.375 -> 9, y1 = 210 / 32 = 6.5625 -> 7, x2 = 530 / 32 = 16.5625 -> 17,
    # y2 = 390 / 32 = 12.1875 -> 12: cells 9..17 x 7..12, the box [9, 7, 18, 13) in cell units.
    roi = torch.tensor([[0.0, 300.0, 210.0, 530.0, 390.0]], dtype=torch.float64)
    assert quantize_rois(roi, 1 / STRIDE).tolist() == [[0.0, 9.0, 7.0, 18.0, 13.0]]
    # A box under one cell keeps one cell (as RoIPool's max(w, 1)); halves round away from zero.
    tiny = torch.tensor([[0.0, 48.0, 16.0, 50.0, 17.0]], dtype=torch.float64)  # 1.5 -> 2, 0.5 -> 1
    assert quantize_rois(tiny, 1 / STRIDE).tolist() == [[0.0, 2.0, 1.0, 3.0, 2.0]]


def test_hand_computed_values_on_a_linear_map():
    """The box (70, 40, 140, 100) at stride 32 snaps to cells 2..4 x 1..3. With 3 x 3 bins each bin is
    one cell; avg of its 2 x 2 bilinear points is the cell's own value c + 10 r, and max is the point
    a quarter cell right and down of the centre: + 0.25 + 2.5."""
    fm = _linear_map()
    box = torch.tensor([[0.0, 70.0, 40.0, 140.0, 100.0]], dtype=torch.float64)
    expected = torch.tensor([[12.0, 13.0, 14.0], [22.0, 23.0, 24.0], [32.0, 33.0, 34.0]], dtype=torch.float64)
    avg = roi_warp(fm, box, 3, 1 / STRIDE, 2)[0, 0]
    torch.testing.assert_close(avg, expected)
    mx = roi_warp(fm, box, 3, 1 / STRIDE, 2, reduction="max")[0, 0]
    torch.testing.assert_close(mx, expected + 2.75)
    # RoIPool (round) takes the same cells here, one per bin: the same as RoIWarp's avg; RoIAlign
    # on the unrounded box samples elsewhere.
    torch.testing.assert_close(roi_pool(fm, box, 3, 1 / STRIDE)[0, 0], expected)
    assert not torch.allclose(roi_align(fm, box, 3, 1 / STRIDE, 2, True)[0, 0], expected)


def test_it_is_roialign_on_the_snapped_box_and_the_module_matches_the_function():
    g = torch.Generator().manual_seed(0)
    fm = torch.randn(2, 3, 9, 11, generator=g)
    xy = torch.rand(6, 2, generator=g) * 200
    boxes = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0], [1.0], [0.0]]), xy, xy + 20 + torch.rand(6, 2, generator=g) * 120], 1)
    snapped = quantize_rois(boxes, 1 / STRIDE) * STRIDE  # back to image pixels, on cell borders
    snapped[:, 0] = boxes[:, 0]
    for reduction in ("avg", "max"):
        torch.testing.assert_close(roi_warp(fm, boxes, 7, 1 / STRIDE, 2, reduction=reduction),
                                   roi_align(fm, snapped, 7, 1 / STRIDE, 2, True, reduction=reduction))
    ordered = boxes[boxes[:, 0].argsort(stable=True)]
    for sampling_ratio, reduction in ((2, "avg"), (3, "max"), (-1, "max")):
        module = RoIWarp(output_size=7, spatial_scale=1 / STRIDE, sampling_ratio=sampling_ratio, reduction=reduction)
        torch.testing.assert_close(module(fm, [boxes[boxes[:, 0] == i, 1:] for i in range(2)]),
                                   roi_warp(fm, ordered, 7, 1 / STRIDE, sampling_ratio, reduction=reduction))
    # The function's documented defaults: spatial_scale 1 (boxes in map cells), 2 x 2 samples, avg.
    cells = ordered.clone()
    cells[:, 1:] /= STRIDE
    torch.testing.assert_close(roi_warp(fm, cells, 7), roi_warp(fm, ordered, 7, 1 / STRIDE, 2, reduction="avg"))
    with pytest.raises(ValueError, match="reduction"):
        RoIWarp(output_size=7, spatial_scale=1 / STRIDE, sampling_ratio=2, reduction="sum")


@pytest.mark.parametrize("reduction", ["avg", "max"])
def test_gradcheck(reduction):
    g = torch.Generator().manual_seed(1)
    fm = torch.randn(1, 2, 6, 7, dtype=torch.float64, generator=g, requires_grad=True)
    boxes = torch.tensor([[0.0, 10.0, 20.0, 150.0, 130.0], [0.0, 40.0, 5.0, 90.0, 170.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: roi_warp(x, boxes, 3, 1 / STRIDE, 2, reduction=reduction), (fm,))
