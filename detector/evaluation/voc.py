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
hand-computed case).

Two protocols (``protocol=``):
    ``devkit`` (default): exactly what the official MATLAB devkit (``VOCevaldet.m``, ``VOCap.m``)
        computes. Boxes are taken to its 1-based inclusive pixel frame, ``(x1 + 1, y1 + 1, x2, y2)``
        (the inverse of the loader's ``x1 - 1, y1 - 1, x2, y2``, as detectron2's), and the IoU uses
        its ``+1`` widths; the 11 recall levels are MATLAB's ``0:0.1:1``, whose 4th element is
        ``3 * 0.1 = 0.30000000000000004``, not 0.3 (MATLAB builds the first half of a range as
        ``start + k * step`` and the second half as ``end - (n - k) * step``, so 0.6 and 0.7 are
        exact). A recall of exactly 3/10 therefore misses the 0.3 level, as in the devkit.
    ``continuous``: IoU on continuous coordinates (torchvision's ``box_iou``) and exact tenths as
        levels (the variant this project used before; kept as a named option).
On boxes converted from VOC files the two IoUs agree up to rounding: the shift by one and the
``+1`` width cancel. The levels are where they differ.

:func:`write_voc_results` writes the devkit's results files (``comp4_det_test_<class>.txt``), so
detections can be submitted to the official evaluation.

Written here because pycocotools computes COCO's 101-point AP only, and no maintained library offers
the VOC variants with the difficult flag on arbitrary boxes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from detector.utils.io import atomic_write_text


PROTOCOLS = ("devkit", "continuous")


def matlab_range(start: float, step: float, stop: float) -> np.ndarray:
    """MATLAB's ``start:step:stop``, element for element (its colon operator, not ``np.arange``).

    MATLAB computes the first half as ``start + k * step`` and the second half from the end,
    ``end - (n - k) * step``; the end is ``stop`` when ``stop`` is (within rounding) ``start + n * step``,
    so that ``0:0.1:1`` ends exactly at 1, and ``start + n * step`` when the steps stop short of it.
    """
    n = int(np.floor((stop - start) / step + 1e-10))
    end = start + n * step
    if abs(end - stop) <= 1e-10 * max(1.0, abs(stop)):
        end = stop
    half = n // 2
    values = [start + k * step for k in range(half + 1)] + [end - (n - k) * step for k in range(half + 1, n + 1)]
    return np.asarray(values, dtype=np.float64)


# The VOC2007 devkit's 11 recall levels, ``for t = 0:0.1:1`` in VOCevaldet.m.
DEVKIT_LEVELS = matlab_range(0.0, 0.1, 1.0)
EXACT_LEVELS = np.arange(11) / 10


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool, protocol: str = "devkit") -> float:
    """AP from a precision/recall curve (points in detection order)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        levels = DEVKIT_LEVELS if protocol == "devkit" else EXACT_LEVELS
        # The devkit sums p / 11 level by level; the same additions in the same order.
        ap = 0.0
        for t in levels:
            ap += (precision[recall >= t].max() if (recall >= t).any() else 0.0) / 11
        return float(ap)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the precision envelope
    changes = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def devkit_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """VOCevaldet.m's overlap of boxes [N, 4] with boxes [G, 4] (this project's frame) -> [N, G].

    Both are taken to the devkit's 1-based inclusive frame ``(x1 + 1, y1 + 1, x2, y2)``; widths and
    heights are then ``x2 - x1 + 1`` and the overlap is 0 unless ``iw > 0 and ih > 0``.
    """
    shift = boxes1.new_tensor([1.0, 1.0, 0.0, 0.0])
    b, g = (boxes1 + shift)[:, None, :], (boxes2 + shift)[None, :, :]  # [N, 1, 4], [1, G, 4]
    iw = torch.minimum(b[..., 2], g[..., 2]) - torch.maximum(b[..., 0], g[..., 0]) + 1  # [N, G]
    ih = torch.minimum(b[..., 3], g[..., 3]) - torch.maximum(b[..., 1], g[..., 1]) + 1
    inter = iw * ih
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    return torch.where((iw > 0) & (ih > 0), inter / (area_b + area_g - inter), torch.zeros_like(inter))


def voc_class_pr(
    detections: Iterable[tuple[int, float, list[float]]],
    ground_truth: Mapping[int, tuple[torch.Tensor, torch.Tensor]],
    *,
    iou_thresh: float = 0.5,
    protocol: str = "devkit",
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Match one class's detections to its ground truth.

    Args:
        detections: (image_id, score, [x1, y1, x2, y2]) over the dataset.
        ground_truth: image_id -> (boxes float [G, 4] xyxy, difficult bool [G]).

    Returns:
        (recall [D], precision [D]) in score order, and the IoU of every true positive.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    iou = devkit_iou if protocol == "devkit" else box_iou
    dets = sorted(detections, key=lambda d: -d[1])  # stable: ties keep their order, as MATLAB's sort
    npos = sum(int((~difficult).sum()) for _, difficult in ground_truth.values())
    matched = {img: torch.zeros(len(boxes), dtype=torch.bool) for img, (boxes, _) in ground_truth.items()}
    tp, fp, tp_ious = [], [], []
    for image_id, _, box in dets:
        boxes, difficult = ground_truth.get(image_id, (torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool)))
        if len(boxes) == 0:
            tp.append(0), fp.append(1)
            continue
        ious = iou(torch.tensor([box], dtype=boxes.dtype), boxes)[0]
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
    protocol: str = "devkit",
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
        recall, precision, _ = voc_class_pr(det_by_class.get(cls, []), gt, iou_thresh=iou_thresh, protocol=protocol)
        aps[cls] = voc_ap(recall, precision, use_07_metric=use_07_metric, protocol=protocol) if len(recall) else 0.0
    return (float(np.mean(list(aps.values()))) if aps else float("nan")), aps


def write_voc_results(results: Iterable[Mapping], dataset, out_dir: str | Path) -> Path:
    """Write the devkit's results files: ``comp4_det_test_<class>.txt`` per class in ``out_dir``.

    Each line is ``<image id> <score> <x1> <y1> <x2> <y2>`` in the devkit's 1-based pixels
    (``x1 + 1, y1 + 1, x2, y2`` of this project's boxes), the image id being the image file's stem
    (VOC's ``000001`` or ``2008_000027``). ``comp4`` is the devkit's name for methods trained on any
    data. Every class gets a file, empty when nothing was detected (the devkit expects all of them).

    Args:
        results: COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).
        dataset: The :class:`~detector.data.DetectionDataset` they were made on.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: dict[int, list[str]] = {cat_id: [] for cat_id in dataset.coco.cats}
    for r in results:
        x, y, w, h = r["bbox"]
        stem = Path(str(dataset.coco.imgs[r["image_id"]]["file_name"])).stem
        lines[r["category_id"]].append(f"{stem} {r['score']:.6f} {x + 1:.1f} {y + 1:.1f} {x + w:.1f} {y + h:.1f}")
    for cat_id, rows in lines.items():
        name = dataset.coco.cats[cat_id]["name"]
        atomic_write_text(out_dir / f"comp4_det_test_{name}.txt", "".join(row + "\n" for row in rows))
    return out_dir
