"""Proposal recall on hand-computed cases: greedy one-to-one matching, limits, AR."""

import math

import pytest
import torch

from detector.evaluation.proposal_recall import proposal_recall


def test_known_case():
    gt = {1: torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]), 2: torch.tensor([[0.0, 0, 10, 10]])}
    props = {
        # image 1: a perfect box for object 0, then one at IoU 0.6 with object 1 (shifted by 2.5 of 10)
        1: torch.tensor([[0.0, 0, 10, 10], [22.5, 0, 32.5, 10]]),
        2: torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 8]]),  # IoU 0.8 only as the 2nd proposal
    }
    r = proposal_recall(props, gt, limits=(1, 2), thresholds=(0.5, 0.7))
    assert r["recall@1@0.5"] == pytest.approx(1 / 3) and r["recall@2@0.5"] == pytest.approx(1.0)
    assert r["recall@2@0.7"] == pytest.approx(2 / 3)
    # AR@2: object overlaps 1.0, 0.6, 0.8 -> over thresholds .50:.05:.95: (10 + 3 + 7) / 30
    iou_shift = 7.5 / 12.5
    assert iou_shift == pytest.approx(0.6)
    assert r["AR@2"] == pytest.approx((10 + 3 + 7) / 30)
    assert r["num_objects"] == 3 and r["mean_proposals"] == 2


def test_one_proposal_covers_one_object_only():
    gt = {1: torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])}
    r = proposal_recall({1: torch.tensor([[0.0, 0, 10, 10]])}, gt, limits=(10,), thresholds=(0.5,))
    assert r["recall@10@0.5"] == pytest.approx(0.5)


def _brute_force_overlaps(gt, proposals):
    """The greedy matching written the slow way: repeatedly take the best remaining (proposal, object) pair."""
    pairs = {(p, g): float(torchvision_iou(proposals[p:p + 1], gt[g:g + 1])) for p in range(len(proposals))
             for g in range(len(gt))}
    out = [0.0] * len(gt)
    used_p, used_g = set(), set()
    while True:
        free = [(v, -g, p, g) for (p, g), v in pairs.items() if p not in used_p and g not in used_g]
        if not free:
            return out
        v, _, p, g = max(free)
        out[g] = v
        used_p.add(p), used_g.add(g)


def torchvision_iou(a, b):
    from torchvision.ops import box_iou

    return box_iou(a.double(), b.double())[0, 0]


def test_greedy_takes_the_best_pair_first_not_the_first_object():
    from detector.evaluation.proposal_recall import _covering_overlaps

    gt = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10]])
    # proposal 0 fits object 1 best (IoU 1.0) and object 0 well (0.818); proposal 1 fits object 0 at 0.6.
    props = torch.tensor([[1.0, 0, 11, 10], [0.0, 0, 10, 6]])
    got = _covering_overlaps(gt, props)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.6, 1.0])
    assert got.tolist() == pytest.approx(_brute_force_overlaps(gt, props))


def test_greedy_matches_a_brute_force_reference_on_random_boxes():
    from detector.evaluation.proposal_recall import _covering_overlaps

    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        n_gt, n_p = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g))
        xy = torch.rand(n_gt + n_p, 2, generator=g) * 40
        wh = 5 + torch.rand(n_gt + n_p, 2, generator=g) * 20
        boxes = torch.cat([xy, xy + wh], 1)
        gt, props = boxes[:n_gt], boxes[n_gt:]
        assert _covering_overlaps(gt, props).tolist() == pytest.approx(_brute_force_overlaps(gt, props)), trial


def test_no_objects_or_no_proposals_give_zero_overlaps_of_the_objects_length():
    from detector.evaluation.proposal_recall import _covering_overlaps

    gt = torch.tensor([[0.0, 0, 10, 10]] * 3)
    for got in (_covering_overlaps(gt, torch.zeros(0, 4)), _covering_overlaps(torch.zeros(0, 4), gt)):
        assert got.dtype == torch.float64
    assert _covering_overlaps(gt, torch.zeros(0, 4)).tolist() == [0.0, 0.0, 0.0]
    assert _covering_overlaps(torch.zeros(0, 4), gt).shape == (0,)
    # fewer proposals than objects: each proposal covers one object, the rest stay at 0
    got = _covering_overlaps(gt, torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]]))
    assert sorted(got.tolist()) == pytest.approx([0.0, 0.5, 1.0])


def test_thresholds_are_inclusive_and_limits_cut_each_image():
    gt = {1: torch.tensor([[0.0, 0, 10, 10]]), 2: torch.tensor([[0.0, 0, 10, 10]]), 3: torch.tensor([[0.0, 0, 10, 10]])}
    props = {
        1: torch.tensor([[0.0, 0, 10, 5]]),  # IoU exactly 0.5
        2: torch.tensor([[0.0, 0, 10, 7]]),  # IoU exactly 0.7
        3: torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 9.5]]),  # IoU 0.95 only as the second proposal
    }
    r = proposal_recall(props, gt, limits=(1, 2), thresholds=(0.5, 0.7, 0.95))
    assert r["recall@1@0.5"] == pytest.approx(2 / 3) and r["recall@1@0.7"] == pytest.approx(1 / 3)
    assert r["recall@1@0.95"] == 0.0 and r["recall@2@0.95"] == pytest.approx(1 / 3)
    assert r["recall@2@0.5"] == 1.0 and r["recall@2@0.7"] == pytest.approx(2 / 3)
    # AR over 0.50:0.05:0.95 counts 1 (0.5), 5 (0.7 reaches .50 .. .70) and 10 (0.95) levels of 10
    assert r["AR@1"] == pytest.approx((1 + 5) / 30) and r["AR@2"] == pytest.approx((1 + 5 + 10) / 30)
    # an image without proposals contributes zeros; mean_proposals counts every proposal, before the limits
    r = proposal_recall({1: props[1], 3: props[3]}, gt, limits=(1,), thresholds=(0.5,))
    assert r["recall@1@0.5"] == pytest.approx(1 / 3) and r["mean_proposals"] == pytest.approx(1.5)


def test_defaults_and_empty_ground_truth():
    r = proposal_recall({1: torch.tensor([[0.0, 0, 10, 10]])}, {1: torch.tensor([[0.0, 0, 10, 10]])})
    assert set(r) == {f"recall@{k}@{t}" for k in (100, 300, 1000) for t in ("0.5", "0.7")} | {
        "AR@100", "AR@300", "AR@1000", "num_objects", "mean_proposals"}
    assert all(r[f"AR@{k}"] == 1.0 for k in (100, 300, 1000))
    assert r["mean_proposals"] == 1.0 and r["num_objects"] == 1.0
    for gt in ({}, {1: torch.zeros(0, 4)}):
        r = proposal_recall({}, gt, limits=(10,), thresholds=(0.5,))
        assert math.isnan(r["recall@10@0.5"]) and math.isnan(r["AR@10"])
        assert r["num_objects"] == 0 and r["mean_proposals"] == 0


def test_counted_ground_truth_leaves_out_crowd_ignore_and_difficult(tmp_path):
    from detector.data.dataset import DetectionDataset
    from detector.evaluation.proposal_recall import counted_ground_truth

    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (7, 8, 9)],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 1},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0, "ignore": 1},
            {"id": 4, "image_id": 8, "category_id": 1, "bbox": [5, 6, 7, 8], "area": 56, "iscrowd": 0, "difficult": 1},
            {"id": 5, "image_id": 8, "category_id": 1, "bbox": [50, 40, 20, 10], "area": 200, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    ds = DetectionDataset(coco_dict=coco, images_dir=tmp_path, source=tmp_path / "a.json", check_files=False)
    gt = counted_ground_truth(ds)
    assert set(gt) == {7, 8, 9}
    assert gt[7].dtype == torch.float64 and gt[7].tolist() == [[10, 20, 40, 60]]
    assert gt[8].tolist() == [[50, 40, 70, 50]]
    assert gt[9].shape == (0, 4)
