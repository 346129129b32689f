"""Fast R-CNN predictor, losses and inference (Girshick, Fast R-CNN, ICCV 2015, sections 2.2-2.3, 3.1).

Shape shorthand:
    R: RoIs in the batch, D: box-head representation size
    K: object classes; the classifier has K + 1 outputs, index 0 = background
    Nd: detections kept in one image

Two sibling layers on the box-head feature: a (K+1)-way softmax classifier and class-specific box
deltas, 4 per class ((K+1) * 4 outputs; the background slot is never trained, which keeps indexing
simple). The multi-task loss is cross-entropy plus smooth L1 on the deltas of the true class for
foreground RoIs only, the latter divided by the number of *sampled* RoIs (not foreground RoIs) so that
an image with few objects does not up-weight its box loss (detectron2's fast_rcnn.py explains this).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import clip_boxes_to_image, nms

from detector.modeling.box_coder import BoxCoder
from detector.ops.dense import exporting, pad_indices
from detector.ops.nms import nms_each


class FastRCNNPredictor(nn.Module):
    """Class scores [R, K+1] and class-specific box deltas [R, 4(K+1)] from features [R, D]."""

    def __init__(self, *, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(in_features, self.num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, 4 * (self.num_classes + 1))
        # Paper 2.3 / 3.1: zero-mean Gaussians with std 0.01 (scores) and 0.001 (deltas).
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(features), self.bbox_pred(features)


def fast_rcnn_losses(
    class_logits: Tensor,
    box_deltas: Tensor,
    gt_classes: Tensor,
    regression_targets: Tensor,
    *,
    smooth_l1_beta: float = 1.0,
) -> dict[str, Tensor]:
    """Fast R-CNN multi-task loss.

    Args:
        class_logits: [R, K+1]; box_deltas: [R, 4(K+1)].
        gt_classes: int64 [R], 0 = background.
        regression_targets: [R, 4] encoded w.r.t. each RoI (ignored for background).
        smooth_l1_beta: 1.0 is the paper's smooth L1 (equation 3).

    Returns:
        ``loss_roi_cls`` and ``loss_roi_box``.
    """
    loss_cls = F.cross_entropy(class_logits, gt_classes)
    fg = torch.nonzero(gt_classes > 0).squeeze(1)
    deltas = box_deltas.view(box_deltas.shape[0], -1, 4)[fg, gt_classes[fg]]  # [F, 4]
    loss_box = F.smooth_l1_loss(
        deltas, regression_targets[fg], beta=smooth_l1_beta, reduction="sum"
    ) / max(gt_classes.numel(), 1)
    return {"loss_roi_cls": loss_cls, "loss_roi_box": loss_box}


def fast_rcnn_inference(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    *,
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> list[dict[str, Tensor]]:
    """Turn per-RoI predictions into detections: per class decode, threshold, NMS, keep the top.

    Returns:
        per image dict(boxes [Nd, 4], scores [Nd], labels int64 [Nd] in 1..K).
    """
    num_per_image = [len(p) for p in proposals]
    scores_all = F.softmax(class_logits, dim=-1).split(num_per_image)
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals)).split(num_per_image)

    candidates = []
    for scores, boxes, image_size in zip(scores_all, boxes_all, image_sizes):
        num_classes = scores.shape[1] - 1
        boxes = clip_boxes_to_image(boxes.view(-1, num_classes + 1, 4), image_size)
        # Drop the background column; every (RoI, class) pair is a candidate detection.
        boxes = boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        num_rois = boxes.shape[0] // max(num_classes, 1)
        labels = torch.arange(1, num_classes + 1, device=scores.device).expand(num_rois, -1).reshape(-1)
        keep = (scores > score_thresh) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        candidates.append((boxes, scores, labels, keep))
    if exporting():
        return [_fixed_shape_detections(*c, nms_thresh, detections_per_img) for c in candidates]
    kept = [{"boxes": b[keep], "scores": s[keep], "labels": c[keep]} for b, s, c, keep in candidates]
    # Per-class NMS (each class suppresses only its own boxes), then the best detections overall;
    # the images side by side (detector.ops.nms).
    keeps = nms_each([d["boxes"] for d in kept], [d["scores"] for d in kept], nms_thresh, [d["labels"] for d in kept])
    return [{k: v[keep[:detections_per_img]] for k, v in d.items()} for d, keep in zip(kept, keeps)]


def _fixed_shape_detections(boxes, scores, labels, keep, nms_thresh: float, detections_per_img: int) -> dict[str, Tensor]:
    """The eager detections of one image, in exactly ``detections_per_img`` rows (an exported program).

    The candidates the eager path drops get score -inf instead: per-class NMS ranks them last, so they
    suppress nothing the eager path keeps. The rows after the real detections have label 0 and score 0
    (a reader keeps the rows with a label > 0).
    """
    scores = torch.where(keep, scores, torch.full_like(scores, -torch.inf))
    # Per-class NMS as one NMS over boxes moved apart by class (torchvision's "coordinate trick", which
    # batched_nms itself picks below 4000 boxes; its per-class loop cannot be traced).
    offsets = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    order = pad_indices(nms(boxes + offsets, scores, nms_thresh), detections_per_img)
    real = (order >= 0) & (scores[order.clamp(min=0)] > -torch.inf)
    order = order.clamp(min=0)
    return {
        "boxes": torch.where(real[:, None], boxes[order], torch.zeros_like(boxes[:1])),
        "scores": torch.where(real, scores[order], torch.zeros_like(scores[:1])),
        "labels": torch.where(real, labels[order], torch.zeros_like(labels[:1])),
    }
