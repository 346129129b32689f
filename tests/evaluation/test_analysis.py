"""The comparison's numbers on a tiny dataset with known detections."""

import math

import pytest
from pycocotools.coco import COCO

from detector.evaluation import make_cocoeval
from detector.evaluation.analysis import analyze


def tiny_gt():
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in (1, 2)]
    boxes = [(1, 3, [10, 10, 40, 40]), (1, 7, [100, 100, 60, 80]), (2, 3, [50, 20, 20, 30]), (2, 7, [0, 0, 120, 150])]
    anns = [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (im, c, b) in enumerate(boxes)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    coco.createIndex()
    return coco


def results(coco, shift=0.0):
    return [{"image_id": a["image_id"], "category_id": a["category_id"],
             "bbox": [a["bbox"][0] + shift * a["bbox"][2], a["bbox"][1], a["bbox"][2], a["bbox"][3]], "score": 0.9}
            for a in coco.dataset["annotations"]]


def test_perfect_detections():
    coco = tiny_gt()
    r = analyze(make_cocoeval(coco, results(coco)))
    assert all(v == pytest.approx(1.0) for v in r["ap_per_iou"])
    assert r["VOC07_mAP50"] == pytest.approx(1.0) and r["VOC_mAP50"] == pytest.approx(1.0)
    assert r["mean_tp_iou"] == pytest.approx(1.0) and len(r["tp_ious"]) == 4
    assert set(r["per_class"]) == {"cat", "dog"}
    assert r["pr_curves"]["0.50"]["precision"][0] == pytest.approx(1.0)


def test_shifted_boxes_lose_ap75_not_ap50():
    coco = tiny_gt()
    # Shifting by 20 % of the width gives IoU 0.8 / 1.2 = 0.667: a hit at 0.5, a miss at 0.75.
    r = analyze(make_cocoeval(coco, results(coco, shift=0.2)))
    thresholds = r["iou_thresholds"]
    ap = dict(zip([round(t, 2) for t in thresholds], r["ap_per_iou"]))
    assert ap[0.5] == pytest.approx(1.0) and ap[0.65] == pytest.approx(1.0)
    assert ap[0.7] == pytest.approx(0.0) and ap[0.75] == pytest.approx(0.0)
    assert r["mean_tp_iou"] == pytest.approx(0.8 / 1.2)
    assert r["VOC_mAP50"] == pytest.approx(1.0)
    assert r["pr_curves"]["0.75"]["precision"][0] == pytest.approx(0.0)


def test_sizes_and_no_detections():
    coco = tiny_gt()
    r = analyze(make_cocoeval(coco, results(coco)))
    # Areas (w * h): 600 (small < 32^2), 1600 and 4800 (medium), 18000 (large).
    assert r["ap_by_size"] == {"small": pytest.approx(1.0), "medium": pytest.approx(1.0), "large": pytest.approx(1.0)}
    empty = analyze(make_cocoeval(coco, []))
    assert empty["ap_per_iou"][0] == pytest.approx(0.0) and math.isnan(empty["mean_tp_iou"])
    assert empty["VOC_mAP50"] == pytest.approx(0.0)


def test_ignore_flags_are_voc_difficult_and_survive_evaluation():
    coco = tiny_gt()
    coco.dataset["annotations"][1]["ignore"] = 1  # the dog of image 1 is a "difficult" box
    coco.createIndex()
    dets = [r for r in results(coco) if not (r["image_id"] == 1 and r["category_id"] == 7)]
    make_cocoeval(coco, dets)  # an earlier evaluation (as during training) must not erase the flag
    assert coco.dataset["annotations"][1]["ignore"] == 1
    r = analyze(make_cocoeval(coco, dets))
    assert r["VOC_mAP50"] == pytest.approx(1.0) and r["VOC07_mAP50"] == pytest.approx(1.0)


def _voc_case():
    """Three cats in image 1 found as hit, miss, hit (the third never): VOC07 6/11, VOC area 1/3 + 2/9
    (tests/evaluation/test_voc.py works these out by hand)."""
    images = [{"id": 1, "width": 200, "height": 200, "file_name": "1.jpg"}]
    gt = [[0, 0, 10, 10], [20, 0, 10, 10], [40, 0, 10, 10]]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 3, "bbox": b, "area": 100, "iscrowd": 0} for i, b in enumerate(gt)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "cat"}]}
    coco.createIndex()
    dets = [{"image_id": 1, "category_id": 3, "bbox": b, "score": s}
            for b, s in (([0, 0, 10, 10], 0.9), ([60, 60, 10, 10], 0.8), ([20, 0, 10, 10], 0.7))]
    return coco, dets


def test_voc_columns_are_the_11_point_and_the_area_map_at_each_threshold():
    coco, dets = _voc_case()
    r = analyze(make_cocoeval(coco, dets), voc_ious=(0.75,))
    assert r["VOC07_mAP50"] == pytest.approx(6 / 11) and r["VOC_mAP50"] == pytest.approx(1 / 3 + 2 / 9)
    assert r["VOC07_mAP75"] == pytest.approx(6 / 11) and r["VOC_mAP75"] == pytest.approx(1 / 3 + 2 / 9)
    # the second hit shifted by 3 px: IoU 7 / 13 = 0.54, a hit at 0.5 and a miss at 0.75
    dets[2]["bbox"] = [23, 0, 10, 10]
    r = analyze(make_cocoeval(coco, dets), voc_ious=(0.75,))
    assert r["VOC_mAP50"] == pytest.approx(1 / 3 + 2 / 9) and r["VOC_mAP75"] == pytest.approx(1 / 3)
    # at 0.75 only the first hit counts: recall 1/3 reaches the levels 0 .. 0.3 of 0:0.1:1
    assert r["VOC07_mAP50"] == pytest.approx(6 / 11) and r["VOC07_mAP75"] == pytest.approx(4 / 11)
    assert r["tp_ious"] == [1.0, 7 / 13]  # IoU in float64: 70 / 130 exactly
    from detector.evaluation.analysis import true_positive_ious

    assert true_positive_ious(make_cocoeval(coco, dets)) == [1.0, 7 / 13]  # at iouThrs[0] = 0.5 by default


def test_voc_columns_of_a_plain_cocoeval_treat_crowd_as_difficult():
    from pycocotools.cocoeval import COCOeval

    from detector.evaluation.analysis import voc_metrics

    coco, dets = _voc_case()
    coco.dataset["annotations"][2]["iscrowd"] = 1  # the object never found: a crowd region, not a miss
    del coco.dataset["annotations"][0]["iscrowd"]  # no key: an ordinary object
    coco.createIndex()
    plain = COCOeval(coco, coco.loadRes(dets), iouType="bbox")
    r = voc_metrics(plain)
    # hit, miss, hit over 2 countable objects: recall 1/2, 1/2, 1 -> area 1/2 + 1/2 * 2/3; 11-point (6 + 5 * 2/3) / 11
    assert r == {"VOC07_mAP50": pytest.approx((6 + 5 * 2 / 3) / 11), "VOC_mAP50": pytest.approx(0.5 + 1 / 3)}


def test_per_class_sizes_curves_and_the_thresholds_they_read():
    coco = tiny_gt()
    coco.dataset["categories"].append({"id": 9, "name": "bird"})  # no object: AP undefined, left out of means
    coco.createIndex()
    # the dog of image 2 (large) and the cat of image 2 (small) are missed; the rest is found exactly
    dets = [d for d in results(coco) if d["image_id"] != 2]
    r = analyze(make_cocoeval(coco, dets), class_names={3: "cat", 9: "bird"})
    # areas (w * h): cats 1600 (medium, found) and 600 (small, missed); dogs 4800 (medium, found), 18000 (large, missed)
    assert r["per_class"]["cat"]["AP"] == pytest.approx(0.5, abs=0.01)
    assert r["per_class"]["cat"]["AP50"] == pytest.approx(0.5, abs=0.01)
    assert r["per_class"]["7"]["AP"] == pytest.approx(0.5, abs=0.01)  # a name missing from class_names: the id
    assert math.isnan(r["per_class"]["bird"]["AP"])
    assert r["ap_by_size"] == {"small": 0.0, "medium": pytest.approx(1.0), "large": 0.0}
    assert r["iou_thresholds"] == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    curve = r["pr_curves"]["0.50"]
    assert curve["recall"] == pytest.approx([i / 100 for i in range(101)])
    # mean over cat and dog (the bird has no curve): each is 1 up to recall 0.5, then 0
    assert curve["precision"][50] == pytest.approx(1.0) and curve["precision"][51] == pytest.approx(0.0)
    assert r["mean_tp_iou"] == pytest.approx(1.0) and len(r["tp_ious"]) == 2


def test_pr_curve_at_075_reads_the_075_threshold():
    coco = tiny_gt()
    # a shift of 1/9 of the width: IoU (1 - 1/9) / (1 + 1/9) = 0.8, a hit at 0.75 and a miss from 0.85 on
    r = analyze(make_cocoeval(coco, results(coco, shift=1 / 9)))
    assert r["pr_curves"]["0.75"]["precision"][100] == pytest.approx(1.0)
    ap = dict(zip([round(t, 2) for t in r["iou_thresholds"]], r["ap_per_iou"]))
    assert ap[0.75] == pytest.approx(1.0) and ap[0.85] == pytest.approx(0.0)


def test_no_ground_truth_gives_undefined_curves_not_zeros():
    coco = tiny_gt()
    coco.dataset["annotations"] = []
    coco.createIndex()
    r = analyze(make_cocoeval(coco, []))
    assert all(v is None for v in r["pr_curves"]["0.50"]["precision"])
    assert all(math.isnan(v) for v in r["ap_per_iou"]) and r["tp_ious"] == [] and math.isnan(r["mean_tp_iou"])


def test_a_box_on_the_small_medium_border_is_one_true_positive():
    # COCO's area ranges share their borders ([0, 32^2], [32^2, 96^2]): a 32 x 32 object is in both,
    # and its detection must still count once.
    images = [{"id": 1, "width": 100, "height": 100, "file_name": "1.jpg"}]
    coco = COCO()
    coco.dataset = {"images": images, "categories": [{"id": 1, "name": "a"}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 32, 32], "area": 1024,
                                     "iscrowd": 0}]}
    coco.createIndex()
    r = analyze(make_cocoeval(coco, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 32, 32], "score": 1.0}]))
    assert r["tp_ious"] == [1.0]


def _row_of_objects(n):
    """One 400 x 400 image holding ``n`` 20 x 20 objects of class "a" in a row, 10 px apart."""
    images = [{"id": 1, "width": 400, "height": 400, "file_name": "1.jpg"}]
    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [30 * i, 0, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(n)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    coco.createIndex()
    return coco, anns


def test_more_than_ten_detections_per_image_count_up_to_one_hundred():
    coco, anns = _row_of_objects(12)
    dets = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 1 - a["id"] / 100} for a in anns]
    r = analyze(make_cocoeval(coco, dets))
    assert r["per_class"]["a"]["AP"] == pytest.approx(1.0) and r["ap_by_size"]["small"] == pytest.approx(1.0)


def test_the_voc_protocol_reaches_the_11_point_levels():
    # 10 objects, 3 found first: recall exactly 3/10. The devkit's 4th level is 0.30000000000000004 and
    # misses it (3/11); the continuous protocol's 0.3 counts it (4/11).
    coco, anns = _row_of_objects(10)
    dets = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 1.0} for a in anns[:3]]
    ev = make_cocoeval(coco, dets)
    assert analyze(ev)["VOC07_mAP50"] == pytest.approx(3 / 11)
    assert analyze(ev, voc_protocol="continuous")["VOC07_mAP50"] == pytest.approx(4 / 11)
