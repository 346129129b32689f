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


def test_round_rule_sizes_many_boxes_and_the_bad_rule_message():
    boxes = torch.cat([SEED_BOX, SEED_BOX + 32]).float()  # float32 in: the geometry is float64
    q = quantize_boxes(boxes, stride=32, output_size=7, rule="round")
    assert q.region.dtype == torch.float64 and q.region.shape == (2, 4)
    assert q.quantized_origin.tolist() == [[9, 7], [10, 8]] and q.quantized_size.tolist() == [[9, 6], [9, 6]]
    with pytest.raises(ValueError, match=r"^rule must be one of \('round', 'floor'\), got 'ceil'$"):
        quantize_boxes(SEED_BOX, stride=32, output_size=7, rule="ceil")


def test_boxes_of_no_width_or_height_lose_everything_and_a_sub_pixel_box_nothing():
    boxes = torch.tensor([[40.0, 40.0, 40.0, 100.0], [40.0, 40.0, 100.0, 40.0], [40.0, 40.0, 40.5, 40.5]])
    q = quantize_boxes(boxes, stride=32, output_size=7, rule="round")
    assert q.lost.tolist() == [1.0, 1.0, 0.0]  # the region (cells 1..1, 32..64 px) covers the 0.25 px^2 box
    assert q.added.tolist()[:2] == [1.0, 1.0] and q.added[2].item() == pytest.approx(1 - 0.25 / 32 ** 2)


def test_size_buckets_are_cocos_area_ranges():
    from detector.evaluation.quantization import size_bucket

    assert [size_bucket(a) for a in (0, 1023.9, 1024, 9215.9, 9216, 1e6)] == [
        "small", "small", "medium", "medium", "large", "large"]


def test_summarize_is_mean_median_and_90th_percentile():
    import math

    from detector.evaluation.quantization import summarize

    # torch's median of an even count is the lower middle value; the quantile interpolates linearly
    # (float32 values in, float64 arithmetic: 3.7 to 1e-12, which float32's 3.7000000477 is not)
    assert summarize(torch.tensor([4.0, 1.0, 3.0, 2.0])) == {"mean": 2.5, "median": 2.0, "p90": pytest.approx(3.7, abs=1e-12)}
    empty = summarize(torch.zeros(0))
    assert set(empty) == {"mean", "median", "p90"} and all(math.isnan(v) for v in empty.values())


def test_resized_ground_truth_and_the_shift_per_size():
    from types import SimpleNamespace

    from detector.evaluation.quantization import by_size, resized_gt_boxes

    imgs = {1: {"id": 1, "width": 100, "height": 50}, 2: {"id": 2, "width": 200, "height": 200}}
    anns = [
        {"id": 1, "image_id": 1, "bbox": [10, 5, 20, 10], "iscrowd": 0},  # small (200 px^2)
        {"id": 2, "image_id": 2, "bbox": [0, 0, 100, 100], "iscrowd": 0, "difficult": 1},  # large; difficult counts
        {"id": 3, "image_id": 2, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd: left out
        {"id": 4, "image_id": 2, "bbox": [0, 0, 50, 50], "iscrowd": 0, "ignore": 1},  # ignore: left out
        {"id": 5, "image_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 0},  # an image not in this split
        {"id": 6, "image_id": 2, "bbox": [100, 100, 40, 40], "iscrowd": 0},  # medium (1600)
    ]
    coco = SimpleNamespace(dataset={"annotations": anns}, imgs=imgs)
    boxes, buckets = resized_gt_boxes(coco, lambda h, w: (2 * h, 3 * w))  # x scaled by 3, y by 2
    assert buckets == ["small", "large", "medium"]  # by the original area, before any resize
    assert boxes.dtype == torch.float64
    assert boxes.tolist() == [[30, 10, 90, 30], [0, 0, 300, 200], [300, 200, 420, 280]]
    stats = by_size(boxes, buckets, stride=32, output_size=7, rule="round")
    assert {k: v["count"] for k, v in stats.items()} == {"small": 1, "medium": 1, "large": 1, "all": 3}
    q = quantize_boxes(boxes, stride=32, output_size=7, rule="round")
    shift = q.shift.norm(dim=1)
    assert stats["small"]["shift_px"] == pytest.approx(float(shift[0]))
    assert stats["medium"]["lost"] == pytest.approx(float(q.lost[2]))
    assert stats["large"]["added"] == pytest.approx(float(q.added[1]))
    assert stats["all"]["shift_px"] == pytest.approx(float(shift.mean()))
    assert stats["all"]["lost"] == pytest.approx(float(q.lost.mean()))
    floor = by_size(boxes, buckets, stride=32, output_size=2, rule="floor")
    q = quantize_boxes(boxes, stride=32, output_size=2, rule="floor")
    assert floor["all"]["added"] == pytest.approx(float(q.added.mean()))
    empty = by_size(boxes[:1], ["small"], stride=32, output_size=7)
    assert empty["large"]["count"] == 0 and empty["large"]["lost"] != empty["large"]["lost"]  # NaN
