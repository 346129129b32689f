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
    # Areas 900 (small < 32^2), 600 (small), 4800 (medium), 18000 (large).
    assert r["ap_by_size"]["small"] == pytest.approx(1.0) and r["ap_by_size"]["large"] == pytest.approx(1.0)
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
