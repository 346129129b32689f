"""The quantization analysis reproduces the seed's worked example and agrees with the RoIPool op."""

import pytest
import torch

from detector.evaluation.quantization import quantize_boxes
from detector.ops.roi_pool import floor_quantize

SEED_BOX = torch.tensor([[300.0, 210.0, 530.0, 390.0]])  # x, y, w, h = 300, 210, 230, 180


def test_seed_example_floor_rule():
    q = quantize_boxes(SEED_BOX, stride=32, output_size=3, rule="floor")
    assert q.origin_cells[0].tolist() == pytest.approx([9.375, 6.5625])  # the seed's 9.375, 6.563
    assert q.size_cells[0].tolist() == pytest.approx([7.1875, 5.625])  # 7.188, 5.625
    assert q.quantized_origin[0].tolist() == [9, 6] and q.quantized_size[0].tolist() == [7, 5]
    # bins 7/3 -> 2 by 5/3 -> 1: cells 9..14 x 6..8 are read
    assert q.region[0].tolist() == [9 * 32, 6 * 32, 15 * 32, 9 * 32]
    cells = floor_quantize(torch.tensor([[0.0, *SEED_BOX[0].tolist()]]), (3, 3), 1 / 32)[0]
    assert cells[1:].tolist() == [9, 6, 2, 1]  # the op's own quantization: same origin and bins
    inter = (480 - 300) * (288 - 210)
    assert q.lost[0].item() == pytest.approx(1 - inter / (230 * 180))
    assert q.added[0].item() == pytest.approx(1 - inter / (192 * 96))
    assert q.shift[0].tolist() == [-12, -18]


def test_round_rule_is_torchvisions_region():
    q = quantize_boxes(SEED_BOX, stride=32, output_size=7, rule="round")
    # round(9.375) = 9, round(6.5625) = 7; round(16.5625) = 17, round(12.1875) = 12, inclusive ends
    assert q.region[0].tolist() == [9 * 32, 7 * 32, 18 * 32, 13 * 32]
    # a box aligned to the cells reads exactly the box under both rules... plus one cell for round's inclusive end
    aligned = quantize_boxes(torch.tensor([[64.0, 32.0, 64.0 + 7 * 32, 32.0 + 7 * 32]]), stride=32, output_size=7, rule="floor")
    assert aligned.lost.item() == 0 and aligned.added.item() == pytest.approx(0)


@pytest.mark.parametrize("rule", ["round", "floor"])
def test_region_is_exactly_the_cells_the_operator_reads(rule):
    """A spike in one cell shows in the pooled output iff the op reads that cell (torchvision's kernel)."""
    from detector.ops.roi_pool import roi_pool

    k = 3
    q = quantize_boxes(SEED_BOX, stride=32, output_size=k, rule=rule)
    x1, y1, x2, y2 = (q.region[0] / 32).tolist()
    rois = torch.tensor([[0.0, *SEED_BOX[0].tolist()]])
    for row in range(18):
        for col in range(25):
            features = torch.zeros(1, 1, 18, 25)
            features[0, 0, row, col] = 1.0
            read = roi_pool(features, rois, (k, k), 1 / 32, quantization=rule).max().item() == 1.0
            assert read == (x1 <= col < x2 and y1 <= row < y2), (row, col)
