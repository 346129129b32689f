"""VOC AP against hand-computed cases."""

import math

import numpy as np
import pytest

from detector.evaluation.voc import DEVKIT_LEVELS, voc_ap, voc_map

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


def test_eleven_point_levels_are_matlabs():
    # recall .1, .2, .3 at precision 1. The devkit's 0:0.1:1 has 0.30000000000000004 as its 4th level,
    # which a recall of exactly 3/10 misses: 3/11. The continuous variant's exact tenths count it: 4/11.
    rec, prec = np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0])
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(3 / 11)
    assert voc_ap(rec, prec, use_07_metric=True, protocol="continuous") == pytest.approx(4 / 11)
    assert DEVKIT_LEVELS[3] == 0.30000000000000004 and DEVKIT_LEVELS[6] == 0.6 and DEVKIT_LEVELS[7] == 0.7


def test_issue_case_tp_tp_tp_fp_fp_fp_tp_with_ten_objects():
    gt = [(i, 1, [0, 0, 10, 10], False) for i in range(10)]
    hits = [True, True, True, False, False, False, True]
    dets = [(i if hit else 100 + i, 1, 1.0 - 0.1 * i, [0, 0, 10, 10]) for i, hit in enumerate(hits)]
    assert voc_map(dets, gt, use_07_metric=True)[0] == pytest.approx(0.3766, abs=1e-4)
    assert voc_map(dets, gt, use_07_metric=True, protocol="continuous")[0] == pytest.approx(0.4156, abs=1e-4)


def _devkit_reference(dets, gt, *, use_07):
    """VOCevaldet.m + VOCap.m transcribed line by line, on 1-based inclusive boxes (one class)."""
    one_based = lambda b: [b[0] + 1, b[1] + 1, b[2], b[3]]  # noqa: E731  (the loader's inverse)
    gts = {}
    for img, box, diff in gt:
        gts.setdefault(img, {"BB": [], "diff": [], "det": []})
        gts[img]["BB"].append(one_based(box)), gts[img]["diff"].append(diff), gts[img]["det"].append(False)
    npos = sum(not d for _, _, d in gt)
    order = sorted(range(len(dets)), key=lambda i: -dets[i][1])  # [sc,si]=sort(-confidence): stable
    tp, fp = [0] * len(dets), [0] * len(dets)
    for d, i in enumerate(order):
        img, _, box = dets[i]
        bb = one_based(box)
        ovmax, jmax = -float("inf"), -1
        for j, bbgt in enumerate(gts.get(img, {"BB": []})["BB"]):
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw, ih = bi[2] - bi[0] + 1, bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= 0.5:
            if not gts[img]["diff"][jmax]:
                if not gts[img]["det"][jmax]:
                    tp[d] = 1
                    gts[img]["det"][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / npos
    prec = tp / (fp + tp)
    if use_07:
        ap = 0.0
        for t in [0 + k * 0.1 for k in range(6)] + [1 - (10 - k) * 0.1 for k in range(6, 11)]:  # 0:0.1:1
            p = prec[rec >= t].max() if (rec >= t).any() else 0.0
            ap += p / 11
        return ap
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def test_equals_the_devkit_on_difficult_boxes_ties_and_recall_exactly_three_tenths():
    # 10 non-difficult objects in 5 images plus 2 difficult ones; pixel-aligned boxes as VOC files give
    # (x1 - 1, y1 - 1, x2, y2), some off by a few pixels around IoU 0.5, equal scores (ties), a
    # duplicate, a detection on a difficult box, and recall landing on exactly 3/10.
    gt = [(img, [10 * k, 5, 10 * k + 20, 40], False) for img in range(5) for k in (0, 4)]
    gt += [(0, [100, 100, 130, 150], True), (3, [60, 60, 90, 70], True)]
    dets = [
        (0, 0.9, [0, 5, 20, 40]),      # TP
        (1, 0.9, [1, 6, 21, 41]),      # TP (tie)
        (2, 0.9, [40, 5, 60, 40]),     # TP (tie) -> recall 3/10
        (0, 0.8, [100, 100, 130, 150]),  # on a difficult box: ignored
        (0, 0.8, [0, 5, 20, 40]),      # duplicate: FP
        (4, 0.7, [9, 5, 29, 40]),      # IoU 12/29 < 0.5 in both frames: FP
        (3, 0.6, [60, 60, 90, 70]),    # difficult: ignored
        (3, 0.5, [43, 8, 63, 43]),     # TP
        (4, 0.5, [200, 200, 220, 220]),  # nothing there: FP
        (1, 0.4, [40, 5, 60, 40]),     # TP
    ]
    ours_dets = [(img, 1, score, box) for img, score, box in dets]
    ours_gt = [(img, 1, box, diff) for img, box, diff in gt]
    for use_07 in (True, False):
        expected = _devkit_reference(dets, gt, use_07=use_07)
        assert voc_map(ours_dets, ours_gt, use_07_metric=use_07)[0] == pytest.approx(expected, abs=1e-12)
    # The case does exercise the 0.3 level: the continuous variant's exact tenths score higher.
    assert voc_map(ours_dets, ours_gt, use_07_metric=True, protocol="continuous")[0] > _devkit_reference(dets, gt, use_07=True)


def test_results_files_are_in_the_devkits_one_based_frame(tmp_path):
    """comp4_det_test_<class>.txt: ``id score x1 y1 x2 y2`` 1-based inclusive, as the XML writes boxes:
    the fixture's cat (31, 41, 150, 160 in its XML) detected exactly comes back as those numbers."""
    from conftest import FORMATS
    from detector.data import VOCDetection
    from detector.evaluation.voc import write_voc_results

    ds = VOCDetection(root=FORMATS / "VOCdevkit", sets=["2007/trainval"], class_names=["cat", "person"])
    (image_id,) = ds.ids
    cat = next(c for c, info in ds.coco.cats.items() if info["name"] == "cat")
    x1, y1, x2, y2 = ds[0][1]["boxes"][0].tolist()  # the cat, 0-based continuous
    results = [{"image_id": image_id, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.75}]
    out = write_voc_results(results, ds, tmp_path / "voc")
    assert (out / "comp4_det_test_cat.txt").read_text() == "000005 0.750000 31.0 41.0 150.0 160.0\n"
    assert (out / "comp4_det_test_person.txt").read_text() == ""  # every class gets its file
    # Several detections of a class: one line each; a folder that does not exist yet, and one already
    # written (an evaluation run again) is written over.
    results.append({"image_id": image_id, "category_id": cat, "bbox": [0.0, 1.0, 9.0, 19.0], "score": 0.5})
    for _ in range(2):
        out = write_voc_results(results, ds, tmp_path / "new" / "voc")
        assert (out / "comp4_det_test_cat.txt").read_text() == (
            "000005 0.750000 31.0 41.0 150.0 160.0\n000005 0.500000 1.0 2.0 9.0 20.0\n"
        )


def test_matlab_colon_operator_builds_the_devkit_levels():
    from detector.evaluation.voc import matlab_range

    # MATLAB's 0:0.1:1 (its colon algorithm: the first half counted up from start, the second half down
    # from stop, so the last element is exactly 1): 11 elements, 0.3 is the double just above 0.3 and
    # 0.7 the double 1 - 0.30000000000000004.
    levels = matlab_range(0.0, 0.1, 1.0)
    assert levels.shape == (11,) and levels[0] == 0.0 and levels[-1] == 1.0 and levels[5] == 0.5
    assert levels[3] == 0.30000000000000004 and levels[3] > 0.3
    assert levels[7] == 0.7 and levels[6] == 0.6 and levels[9] == 0.9
    assert np.array_equal(levels, DEVKIT_LEVELS)
    assert matlab_range(1.0, 0.5, 3.0).tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert matlab_range(0.0, 0.25, 0.9).tolist() == [0.0, 0.25, 0.5, 0.75]  # stops below stop


def test_devkit_overlap_in_its_one_based_inclusive_frame():
    import torch

    from detector.evaluation.voc import devkit_iou

    # This project's (0, 0, 9, 9) is the devkit's (1, 1, 9, 9): 9 x 9 pixels inclusive; (5, 5, 14, 14)
    # is (6, 6, 14, 14): the overlap is 4 x 4 = 16 of 81 + 81 - 16.
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0], [20.0, 0.0, 30.0, 5.0]])
    b = torch.tensor([[5.0, 5.0, 14.0, 14.0], [0.0, 0.0, 9.0, 9.0], [9.0, 0.0, 19.0, 9.0]])
    iou = devkit_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0].item() == pytest.approx(16 / 146, abs=1e-7)
    assert iou[0, 1].item() == 1.0
    # Sharing the column x = 9 (devkit: 10..19 against 1..9): iw = 9 - 10 + 1 = 0, no overlap.
    assert iou[0, 2].item() == 0.0
    # (20, 0, 30, 5) -> (21, 1, 30, 5) against (10, 1, 19, 9): apart by one pixel.
    assert iou[1].tolist() == [0.0, 0.0, 0.0]
    # Overlapping in x only (rows apart): 0, not a negative product.
    assert devkit_iou(torch.tensor([[0.0, 0.0, 9.0, 3.0]]), torch.tensor([[0.0, 6.0, 9.0, 9.0]])).item() == 0.0
    # One shared pixel column (devkit: 9..19 against 1..9, iw = 1) and one shared row: they overlap.
    one_col = devkit_iou(torch.tensor([[8.0, 0.0, 19.0, 9.0]]), a[:1]).item()
    one_row = devkit_iou(torch.tensor([[0.0, 8.0, 9.0, 19.0]]), a[:1]).item()
    assert one_col == pytest.approx(9 / (81 + 99 - 9), abs=1e-7) and one_row == pytest.approx(one_col, abs=1e-7)
    # A partial overlap with unequal sides: (2, 3, 11, 8) -> (3, 4, 11, 8) is 9 x 5; against (1, 1, 9, 9) the
    # overlap is 7 x 5 = 35 of 45 + 81 - 35.
    assert devkit_iou(torch.tensor([[2.0, 3.0, 11.0, 8.0]]), a[:1]).item() == pytest.approx(35 / 91, abs=1e-7)


def test_class_pr_counts_iou_exactly_at_the_threshold_and_returns_the_true_positives_ious():
    import torch

    from detector.evaluation.voc import voc_class_pr

    gt = {1: (torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64), torch.tensor([False]))}
    # continuous frame: [0, 0, 10, 5] covers exactly half of the box -> IoU 0.5
    recall, precision, ious = voc_class_pr([(1, 0.9, [0, 0, 10, 5])], gt, protocol="continuous")
    assert list(recall) == [1.0] and list(precision) == [1.0] and ious == [0.5]
    recall, _, ious = voc_class_pr([(1, 0.9, [0, 0, 10, 5])], gt, iou_thresh=0.51, protocol="continuous")
    assert list(recall) == [0.0] and ious == []
    # the devkit's 1-based inclusive pixels give whole-pixel boxes the same widths: the same 0.5
    _, _, ious = voc_class_pr([(1, 0.9, [0, 0, 10, 5])], gt)
    assert ious == [0.5]
    with pytest.raises(ValueError, match=r"^protocol must be one of \('devkit', 'continuous'\), got 'coco'$"):
        voc_class_pr([], gt, protocol="coco")


def test_class_pr_images_without_objects_and_score_ties():
    import torch

    from detector.evaluation.voc import voc_class_pr

    box = torch.tensor([[0.0, 0, 10, 10]], dtype=torch.float64)
    gt = {1: (box, torch.tensor([False])), 2: (box, torch.tensor([False])), 3: (torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))}
    # equal scores keep their given order (MATLAB's stable sort): the miss on image 3 (no objects), then the
    # hit on image 9 (not in the ground truth at all), then the two hits.
    dets = [(3, 0.5, [0, 0, 10, 10]), (9, 0.5, [0, 0, 10, 10]), (1, 0.5, [0, 0, 10, 10]), (2, 0.9, [0, 0, 10, 10])]
    recall, precision, ious = voc_class_pr(dets, gt)
    assert list(recall) == [0.5, 0.5, 0.5, 1.0]
    assert list(precision) == pytest.approx([1.0, 1 / 2, 1 / 3, 2 / 4])
    assert ious == [1.0, 1.0]
    # no countable object: recall stays 0 rather than dividing by zero
    recall, precision, _ = voc_class_pr([(3, 0.5, [0, 0, 10, 10])], {3: gt[3]})
    assert list(recall) == [0.0] and list(precision) == [0.0]


def test_map_counts_a_class_without_detections_as_zero_and_leaves_out_a_difficult_only_class():
    gt = GT + [(1, 2, [0, 0, 5, 5], False), (1, 3, [0, 0, 5, 5], True)]
    dets = DETS + [(1, 3, 0.9, [0, 0, 5, 5])]
    m, per_class = voc_map(dets, gt)
    assert per_class == {1: pytest.approx(1 / 3 + 2 / 9), 2: 0.0}
    assert m == pytest.approx((1 / 3 + 2 / 9) / 2)
    assert math.isnan(voc_map(dets, [(1, 3, [0, 0, 5, 5], True)])[0])
    # The difficult-only class first: it is skipped, and the classes after it are still scored.
    m_first, per_class_first = voc_map(dets, [(1, 3, [0, 0, 5, 5], True)] + gt)
    assert per_class_first == per_class and m_first == pytest.approx(m)


def test_map_at_an_iou_of_one_third_in_both_frames():
    # [0, 0, 10, 10] against [5, 0, 15, 10]: 50 / 150 in either frame
    gt = [(1, 1, [0, 0, 10, 10], False)]
    det = [(1, 1, 0.9, [5, 0, 15, 10])]
    for protocol in ("devkit", "continuous"):
        assert voc_map(det, gt, iou_thresh=1 / 3, protocol=protocol)[0] == pytest.approx(1.0)
        assert voc_map(det, gt, iou_thresh=0.34, protocol=protocol)[0] == 0.0
