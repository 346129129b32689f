"""Pascal VOC average precision at one IoU threshold, implemented once, honouring ``difficult``.

Shape shorthand:
    D: detections of one class over the whole dataset
    G: ground-truth boxes of one class in one image

VOC's protocol (Everingham et al., IJCV 2010, section 4.2; the devkit's ``VOCevaldet``): per class,
detections are sorted by score and each is matched to the ground truth of highest IoU in its image
(matched or not). IoU >= the threshold with an unmatched non-difficult box is a true positive, with
an already-matched box a false positive (a duplicate), with a *difficult* box neither (it neither
helps nor hurts); below the threshold it is a false positive. Recall counts non-difficult boxes only.

Two ways to turn the precision/recall curve into a number:
    11-point (VOC2007): the mean, over recall levels 0, 0.1, ..., 1, of the highest precision at
        recall >= that level.
    area (VOC2010 and later): the area under the curve after making precision monotonically
        decreasing (the "precision envelope").
The 11-point value samples the envelope coarsely, so the two differ on small sets (tests have a
hand-computed case). IoU is computed on continuous coordinates (torchvision's ``box_iou``), not with
the devkit's legacy "+1 pixel" widths.

Written here because pycocotools computes COCO's 101-point AP only, and no maintained library offers
the VOC variants with the difficult flag on arbitrary boxes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torchvision.ops import box_iou


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """AP from a precision/recall curve (points in detection order)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        return float(
            # Recall levels as exact tenths (linspace gives 0.30000000000000004, which a recall of
            # exactly 3/10 would miss; the MATLAB devkit's 0:0.1:1 has 0.6 and 0.7 exact).
            np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(11) / 10])
        )
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def voc_class_pr(
    detections: Iterable[tuple[int, float, list[float]]],
    ground_truth: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    *,
    iou_thresh: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Match one class's detections to its ground truth.

    Args:
        detections: (image_id, score, [x1, y1, x2, y2]) over the dataset.
        ground_truth: image_id -> (boxes float [G, 4] xyxy, difficult bool [G]).

    Returns:
        (recall [D], precision [D]) in score order, and the IoU of every true positive.
    """
    dets = sorted(detections, key=lambda d: -d[1])
    npos = sum(int((~difficult).sum()) for _, difficult in ground_truth.values())
    matched = {img: torch.zeros(len(boxes), dtype=torch.bool) for img, (boxes, _) in ground_truth.items()}
    tp, fp, tp_ious = [], [], []
    for image_id, _, box in dets:
        boxes, difficult = ground_truth.get(image_id, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool)))
        if len(boxes) == 0:
            tp.append(0), fp.append(1)
            continue
        ious = box_iou(torch.tensor([box], dtype=boxes.dtype), boxes)[0]
        best = int(ious.argmax())
        if ious[best] >= iou_thresh:
            if difficult[best]:
                continue  # neither a true nor a false positive
            if not matched[image_id][best]:
                matched[image_id][best] = True
                tp.append(1), fp.append(0)
                tp_ious.append(float(ious[best]))
            else:
                tp.append(0), fp.append(1)  # a duplicate detection
        else:
            tp.append(0), fp.append(1)
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / max(npos, 1)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return recall, precision, tp_ious


def voc_map(
    detections: Iterable[tuple[int, int, float, list[float]]],
    ground_truth: Iterable[tuple[int, int, list[float], bool]],
    *,
    iou_thresh: float = 0.5,
    use_07_metric: bool = False,
) -> tuple[float, dict[int, float]]:
    """VOC mAP over classes that have at least one non-difficult ground-truth box.

    Args:
        detections: (image_id, class, score, [x1, y1, x2, y2]).
        ground_truth: (image_id, class, [x1, y1, x2, y2], difficult).

    Returns:
        (mAP, {class: AP}).
    """
    gt_by_class: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
    for image_id, cls, box, difficult in ground_truth:
        gt_by_class[cls][image_id].append((box, bool(difficult)))
    det_by_class: dict[int, list] = defaultdict(list)
    for image_id, cls, score, box in detections:
        det_by_class[cls].append((image_id, float(score), list(box)))
    aps = {}
    for cls, per_image in gt_by_class.items():
        gt = {
            img: (torch.tensor([b for b, _ in items], dtype=torch.float64).reshape(-1, 4),
                  torch.tensor([d for _, d in items], dtype=torch.bool))
            for img, items in per_image.items()
        }
        if not any((~d).any() for _, d in gt.values()):
            continue  # only difficult boxes: AP undefined, left out of the mean (as the devkit)
        recall, precision, _ = voc_class_pr(det_by_class.get(cls, []), gt, iou_thresh=iou_thresh)
        aps[cls] = voc_ap(recall, precision, use_07_metric=use_07_metric) if len(recall) else 0.0
    return (float(np.mean(list(aps.values()))) if aps else float("nan")), aps
