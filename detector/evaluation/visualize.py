"""Draw ground truth and detections on images (for TensorBoard and quick looks).

Shape shorthand:
    G: ground-truth boxes, D: detections of one image
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes


@torch.no_grad()
def draw_detections(
    image: Tensor,
    target: dict[str, Tensor],
    detection: dict[str, Tensor],
    class_names: tuple[str, ...] | list[str],
    *,
    score_thresh: float = 0.5,
) -> Tensor:
    """Ground truth in green, detections scoring at least ``score_thresh`` in red, with labels.

    Args:
        image: float [3, H, W] in 0..1; target: boxes [G, 4], labels [G]; detection: boxes [D, 4],
            labels [D], scores [D] (same pixels as the image).

    Returns:
        uint8 [3, H, W]
    """
    canvas = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    gt_boxes, gt_labels = target["boxes"].cpu(), target["labels"].cpu()
    if len(gt_boxes):
        canvas = draw_bounding_boxes(
            canvas, gt_boxes, labels=[class_names[int(k) - 1] for k in gt_labels], colors="lime", width=1
        )
    keep = detection["scores"].cpu() >= score_thresh
    boxes, labels, scores = detection["boxes"].cpu()[keep], detection["labels"].cpu()[keep], detection["scores"].cpu()[keep]
    if len(boxes):
        canvas = draw_bounding_boxes(
            canvas, boxes, labels=[f"{class_names[int(k) - 1]} {s:.2f}" for k, s in zip(labels, scores)],
            colors="red", width=2,
        )
    return canvas
