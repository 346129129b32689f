"""How much of the ground truth do proposals cover? Recall at IoU 0.5 / 0.7 and average recall (AR).

The measure of Hosang et al. (*What makes for effective detection proposals?*, TPAMI 2016) as
detectron2's ``_evaluate_box_proposals`` and COCO's proposal AR compute it: per image, the first
``k`` proposals (best first) are matched to the ground truth one to one, greedily: the object whose
best remaining proposal overlaps it most is covered by that proposal, and both leave the pool. An
object's recall IoU is that overlap (0 when it got none). Recall@k at a threshold t is the fraction of
objects with overlap >= t; AR@k is the mean recall over t = 0.50, 0.55, ..., 0.95. Crowd regions
and ``ignore`` / ``difficult`` objects are not counted, as in the detection metrics.

Written here because pycocotools' proposal AR goes through a results file of scored boxes per
category-less detection and gives AR only, not recall at a fixed IoU.

Shape shorthand:
    G: ground-truth objects of one image; P: its proposals (best first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detector.data.dataset import is_ignored

__all__ = ["counted_ground_truth", "proposal_recall"]

IOU_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))


def _covering_overlaps(gt: Tensor, proposals: Tensor) -> Tensor:
    """The greedy one-to-one overlap of each object [G] with the proposals [P, 4]."""
    out = torch.zeros(len(gt), dtype=torch.float64)
    if len(gt) == 0 or len(proposals) == 0:
        return out
    iou = box_iou(proposals.double(), gt.double())  # [P, G]
    # Each round uses up one proposal and one object, so every round finds an unused pair (IoU >= 0).
    for _ in range(min(len(proposals), len(gt))):
        best_per_gt, best_proposal = iou.max(dim=0)  # [G]
        g = int(best_per_gt.argmax())
        out[g] = best_per_gt[g]
        iou[best_proposal[g], :] = -1  # this proposal is used
        iou[:, g] = -1  # this object is covered
    return out


def proposal_recall(
    proposals: Mapping[int, Tensor],
    ground_truth: Mapping[int, Tensor],
    *,
    limits: Sequence[int] = (100, 300, 1000),
    thresholds: Sequence[float] = (0.5, 0.7),
) -> dict[str, float]:
    """Recall of the ground truth by the first ``k`` proposals per image, for each ``k`` in ``limits``.

    Args:
        proposals: image id -> boxes [P, 4] xyxy, best first (original-image pixels).
        ground_truth: image id -> boxes [G, 4] xyxy of the counted objects (same pixels).

    Returns:
        ``recall@{k}@{t}`` for each limit and threshold, ``AR@{k}`` (IoU 0.50:0.95) for each limit,
        ``num_objects`` and ``mean_proposals`` (per image, before any limit).
    """
    out: dict[str, float] = {}
    total = sum(len(g) for g in ground_truth.values())
    for k in limits:
        overlaps = torch.cat([
            _covering_overlaps(ground_truth[i], proposals.get(i, torch.zeros(0, 4))[:k]) for i in ground_truth
        ]) if ground_truth else torch.zeros(0, dtype=torch.float64)
        for t in thresholds:
            out[f"recall@{k}@{t:g}"] = float((overlaps >= t - 1e-12).double().mean()) if total else float("nan")
        out[f"AR@{k}"] = (
            float(sum((overlaps >= t - 1e-12).double().mean() for t in IOU_THRESHOLDS) / len(IOU_THRESHOLDS))
            if total else float("nan")
        )
    out["num_objects"] = float(total)
    out["mean_proposals"] = float(sum(len(p) for p in proposals.values()) / max(len(proposals), 1))
    return out


def counted_ground_truth(dataset) -> dict[int, Tensor]:
    """Per image of a :class:`~detector.data.DetectionDataset`: the xyxy boxes recall counts.

    Crowd regions and ``ignore`` / ``difficult`` objects are left out; original-image pixels.
    """
    gt: dict[int, list[list[float]]] = {i: [] for i in dataset.ids}
    for ann in dataset.coco.dataset["annotations"]:
        if ann["image_id"] in gt and not is_ignored(ann):
            x, y, w, h = ann["bbox"]
            gt[ann["image_id"]].append([x, y, x + w, y + h])
    return {i: torch.tensor(b, dtype=torch.float64).reshape(-1, 4) for i, b in gt.items()}
