"""Where does a detector lose AP? Everything the RoIPool-versus-RoIAlign comparison reports.

Shape shorthand (pycocotools' ``COCOeval.eval["precision"]``):
    T: 10 IoU thresholds 0.50:0.05:0.95
    R: 101 recall thresholds 0:0.01:1
    K: categories
    A: 4 area ranges (all, small, medium, large)
    M: 3 max-detection settings (1, 10, 100)

From one evaluated ``COCOeval`` (see :func:`detector.evaluation.make_cocoeval`):

- AP at each IoU threshold: the quantization error of the seed shows as a steeper fall at high IoU
  (a box that is off by a cell still passes 0.5 but fails 0.75 and beyond).
- AP per class, precision/recall curves at IoU 0.5 and 0.75, AP by object size.
- The IoU of every true positive at IoU 0.5 (COCO's own matching) and their mean: how tight the boxes
  that count are.
- VOC mAP@0.5, 11-point (VOC2007) and area (VOC2010+), with crowd / ``ignore`` / ``difficult``
  ground truth treated as VOC's difficult boxes (:mod:`detector.evaluation.voc`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from detector.evaluation.voc import voc_map


def _mean_valid(a: np.ndarray) -> float:
    valid = a[a > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def true_positive_ious(coco_eval: COCOeval, iou_index: int = 0) -> list[float]:
    """IoU of each detection matched at ``iouThrs[iou_index]`` (area "all", 100 detections)."""
    gt_anns, dt_anns = coco_eval.cocoGt.anns, coco_eval.cocoDt.anns
    max_det = coco_eval.params.maxDets[-1]
    ious = []
    for e in coco_eval.evalImgs:
        if e is None or e["aRng"] != coco_eval.params.areaRng[0] or e["maxDet"] != max_det:
            continue
        for dt_id, gt_id, ignored in zip(e["dtIds"], e["dtMatches"][iou_index], e["dtIgnore"][iou_index]):
            if gt_id > 0 and not ignored:
                a = torch.tensor([_xyxy(dt_anns[dt_id]["bbox"])], dtype=torch.float64)
                b = torch.tensor([_xyxy(gt_anns[int(gt_id)]["bbox"])], dtype=torch.float64)
                ious.append(float(box_iou(a, b)[0, 0]))
    return ious


def voc_metrics(coco_eval: COCOeval, iou_thresh: float = 0.5, protocol: str = "devkit") -> dict[str, float]:
    """VOC07 11-point and VOC2010+ area mAP on the images and categories ``coco_eval`` scored."""
    img_ids = set(coco_eval.params.imgIds)
    # The flags as loaded (make_cocoeval records them before pycocotools overwrites ``ignore``).
    flags = getattr(coco_eval, "not_scored", {})  # make_cocoeval's; {} for a plain COCOeval
    gt = [
        (a["image_id"], a["category_id"], _xyxy(a["bbox"]), flags.get(a["id"], bool(a.get("iscrowd", 0))))
        for a in coco_eval.cocoGt.dataset["annotations"] if a["image_id"] in img_ids
    ]
    dets = [
        (a["image_id"], a["category_id"], a["score"], _xyxy(a["bbox"]))
        for a in coco_eval.cocoDt.dataset.get("annotations", []) if a["image_id"] in img_ids
    ]
    voc07, _ = voc_map(dets, gt, iou_thresh=iou_thresh, use_07_metric=True, protocol=protocol)
    voc_area, _ = voc_map(dets, gt, iou_thresh=iou_thresh, use_07_metric=False, protocol=protocol)
    p = round(100 * iou_thresh)  # 0.5 -> "50", 0.75 -> "75"
    return {f"VOC07_mAP{p}": voc07, f"VOC_mAP{p}": voc_area}


def analyze(
    coco_eval: COCOeval, class_names: dict[int, str] | None = None, *, voc_protocol: str = "devkit",
    voc_ious: tuple[float, ...] = (0.5,),
) -> dict[str, Any]:
    """Everything the comparison table and plots need, as plain Python values.

    Args:
        coco_eval: evaluated and accumulated.
        class_names: category id -> name (default: the ground truth's names).
        voc_protocol: ``devkit`` or ``continuous`` (:mod:`detector.evaluation.voc`).
        voc_ious: IoU thresholds of the VOC columns (0.5 always): ``VOC07_mAP<100 t>``, ``VOC_mAP<100 t>``.

    Returns:
        dict with ``iou_thresholds``, ``ap_per_iou``, ``per_class`` ({name: {"AP", "AP50"}}),
        ``pr_curves`` ({"0.50"/"0.75": {"recall", "precision"}}), ``ap_by_size``, ``tp_ious``,
        ``mean_tp_iou``, ``VOC07_mAP50``, ``VOC_mAP50``.
    """
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    names = class_names or {c["id"]: c["name"] for c in coco_eval.cocoGt.dataset["categories"]}
    all_area, max_det = 0, len(p.maxDets) - 1
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))

    ap_per_iou = [_mean_valid(precision[t, :, :, all_area, max_det]) for t in range(len(p.iouThrs))]
    per_class = {
        names.get(cat, str(cat)): {
            "AP": _mean_valid(precision[:, :, k, all_area, max_det]),
            "AP50": _mean_valid(precision[t50, :, k, all_area, max_det]),
        }
        for k, cat in enumerate(p.catIds)
    }
    pr_curves = {}
    for label, t in (("0.50", t50), ("0.75", t75)):
        curve = precision[t, :, :, all_area, max_det]  # [R, K]
        with np.errstate(invalid="ignore"):
            mean = np.where(curve > -1, curve, np.nan)
            mean = np.nanmean(mean, axis=1) if np.isfinite(mean).any() else np.full(len(p.recThrs), np.nan)
        pr_curves[label] = {"recall": p.recThrs.tolist(), "precision": [None if math.isnan(v) else float(v) for v in mean]}
    ap_by_size = {
        name: _mean_valid(precision[:, :, :, a, max_det]) for a, name in ((1, "small"), (2, "medium"), (3, "large"))
    }
    tp_ious = true_positive_ious(coco_eval, t50)
    return {
        "iou_thresholds": [float(t) for t in p.iouThrs],
        "ap_per_iou": ap_per_iou,
        "per_class": per_class,
        "pr_curves": pr_curves,
        "ap_by_size": ap_by_size,
        "tp_ious": tp_ious,
        "mean_tp_iou": float(np.mean(tp_ious)) if tp_ious else float("nan"),
        **{k: v for t in sorted({0.5, *voc_ious}) for k, v in voc_metrics(coco_eval, t, voc_protocol).items()},
    }
