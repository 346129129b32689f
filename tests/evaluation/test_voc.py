"""VOC AP against hand-computed cases."""

import math

import numpy as np
import pytest

from detector.evaluation.voc import voc_ap, voc_map

# Three objects of class 1 in one image; detections in score order: hit, miss, hit (third object
# never found). recall = [1/3, 1/3, 2/3], precision = [1, 1/2, 2/3].
GT = [(1, 1, [0, 0, 10, 10], False), (1, 1, [20, 0, 30, 10], False), (1, 1, [40, 0, 50, 10], False)]
DETS = [(1, 1, 0.9, [0, 0, 10, 10]), (1, 1, 0.8, [60, 60, 70, 70]), (1, 1, 0.7, [20, 0, 30, 10])]


def test_all_point_and_11_point_differ_as_computed_by_hand():
    area, _ = voc_map(DETS, GT, use_07_metric=False)
    # Envelope: precision 1 up to recall 1/3, then 2/3 up to recall 2/3: 1/3 * 1 + 1/3 * 2/3.
    assert area == pytest.approx(1 / 3 + 2 / 9)
    eleven, _ = voc_map(DETS, GT, use_07_metric=True)
    # Recall levels 0, .1, .2, .3 -> 1; .4, .5, .6 -> 2/3; .7 ... 1.0 -> 0: (4 + 2) / 11.
    assert eleven == pytest.approx(6 / 11)
    assert eleven < area


def test_difficult_boxes_neither_help_nor_hurt():
    gt = GT[:2] + [(1, 1, [40, 0, 50, 10], True)]  # the third object is difficult
    dets = DETS[:1] + [(1, 1, 0.85, [40, 0, 50, 10])] + DETS[1:]  # a hit on the difficult box
    area, _ = voc_map(dets, gt)
    # The difficult hit is skipped: hit, miss, hit over 2 positives -> recall 1/2, 1/2, 1.
    assert area == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_duplicates_are_false_positives_and_perfect_is_one():
    perfect = [(1, 1, 1.0, b) for _, _, b, _ in GT]
    assert voc_map(perfect, GT)[0] == pytest.approx(1.0)
    assert voc_map(perfect, GT, use_07_metric=True)[0] == pytest.approx(1.0)
    dup = perfect + [(1, 1, 0.5, [0, 0, 10, 10])]
    assert voc_map(dup, GT)[0] == pytest.approx(1.0)  # a low-scored duplicate after full recall
    # The duplicate outranks the other hits: recall 1/3, 1/3, 2/3, 1 with precision 1, 1/2, 2/3, 3/4.
    dup_first = [(1, 1, 1.0, [0, 0, 10, 10]), (1, 1, 0.99, [0, 0, 10, 10]),
                 (1, 1, 0.9, [20, 0, 30, 10]), (1, 1, 0.8, [40, 0, 50, 10])]
    assert voc_map(dup_first, GT)[0] == pytest.approx(1 / 3 + 2 / 3 * 3 / 4)


def test_iou_threshold_and_classes():
    shifted = [(1, 1, 1.0, [3, 0, 13, 10])]  # IoU 7/13 = 0.54 with the first box
    assert voc_map(shifted, GT[:1], iou_thresh=0.5)[0] == pytest.approx(1.0)
    assert voc_map(shifted, GT[:1], iou_thresh=0.75)[0] == pytest.approx(0.0)
    m, per_class = voc_map(DETS + [(1, 2, 0.9, [0, 0, 5, 5])], GT + [(1, 2, [0, 0, 5, 5], False)])
    assert per_class[2] == pytest.approx(1.0) and m == pytest.approx((1 / 3 + 2 / 9 + 1) / 2)


def test_voc_ap_direct():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5]), use_07_metric=False) == pytest.approx(0.75)
    assert math.isnan(voc_map([], [])[0])


def test_eleven_point_counts_exact_tenths():
    # recall .1, .2, .3 at precision 1: levels 0, .1, .2, .3 count -> 4/11 (linspace's 0.30000000000000004 would drop one).
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0]), use_07_metric=True) == pytest.approx(4 / 11)
