import torch

from detector.modeling import Matcher


def test_thresholds():
    m = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=False)
    iou = torch.tensor([[0.9, 0.7, 0.69, 0.3, 0.29, 0.0], [0.1, 0.8, 0.2, 0.1, 0.1, 0.0]])
    # pred 1: best is gt 1 at 0.8; pred 2: 0.69 in between; pred 3: 0.3 in between; pred 4: below.
    assert m(iou).tolist() == [0, 1, -2, -2, -1, -1]


def test_low_quality_matches_keep_each_gts_best():
    m = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    iou = torch.tensor([[0.2, 0.4, 0.4, 0.1], [0.0, 0.1, 0.05, 0.5]])
    # gt 0's best IoU 0.4 is tied by preds 1 and 2: both match it; gt 1's best is pred 3.
    assert m(iou).tolist() == [-1, 0, 0, 1]


def test_equal_thresholds_fast_rcnn():
    m = Matcher(high_threshold=0.5, low_threshold=0.5)
    iou = torch.tensor([[0.5, 0.49, 0.0]])
    assert m(iou).tolist() == [0, -1, -1]


def test_no_ground_truth_is_all_background():
    m = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    assert m(torch.zeros(0, 5)).tolist() == [-1] * 5


def test_no_predictions():
    m = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    assert m(torch.zeros(3, 0)).tolist() == []
