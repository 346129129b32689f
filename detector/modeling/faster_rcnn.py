"""Faster R-CNN and Fast R-CNN: backbone -> (RPN | external proposals) -> RoI heads.

Shape shorthand:
    N: images in the batch
    G: ground-truth boxes of one image
    P: proposals of one image
    D: detections of one image (at most ``detections_per_img``)

torchvision's data contract: ``images`` is a list of N float tensors [3, H, W] in 0..1 of any sizes;
``targets`` a list of dict(boxes=float32 [G, 4] xyxy pixels, labels=int64 [G] in 1..K). Training
returns a dict of scalar losses; eval returns per image dict(boxes [D, 4], labels [D], scores [D]) in
the original image's pixels.

Fast R-CNN (Girshick 2015) is the same model with ``rpn=None``: proposals from an external method
(selective search, edge boxes, a saved RPN) are passed to ``forward`` in original-image pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.errors import ConfigError
from detector.modeling.roi_heads.roi_heads import RoIHeads
from detector.modeling.rpn.rpn import RPN
from detector.modeling.transform import DetectionTransform


class FasterRCNN(nn.Module):
    """Two-stage detector. ``rpn=None`` makes it Fast R-CNN (proposals given to ``forward``)."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        rpn: RPN | None,
        roi_heads: RoIHeads,
        transform: DetectionTransform,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.transform = transform
        # The pooler's spatial_scale and the anchors' stride are explicit arguments (libraries that
        # guess them from tensor shapes get them wrong for padded inputs); check they agree.
        stride = getattr(backbone, "stride", None)
        scale = getattr(roi_heads.pooler, "spatial_scale", None)
        if stride is not None and scale is not None and abs(scale * stride - 1.0) > 1e-6:
            raise ConfigError(
                f"the pooler's spatial_scale={scale} does not match the backbone stride {stride}: "
                f"build it with spatial_scale={1.0 / stride}"
            )
        if rpn is not None and stride is not None and rpn.anchor_generator.stride != stride:
            raise ConfigError(
                f"the anchor generator's stride={rpn.anchor_generator.stride} does not match the "
                f"backbone stride {stride}"
            )

    @property
    def num_classes(self) -> int:
        return self.roi_heads.predictor.num_classes

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        proposals: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("FasterRCNN needs targets in training mode")
        if self.rpn is None and proposals is None and targets is not None and all("proposals" in t for t in targets):
            # Fast R-CNN in training: a dataset with a proposal file carries them in its targets.
            proposals = [t["proposals"] for t in targets]
        if self.rpn is None and proposals is None:
            raise ValueError("Fast R-CNN (rpn=None) needs external proposals")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)

        losses: dict[str, Tensor] = {}
        if proposals is not None:
            # External proposals are in original pixels: bring them to the resized images. In at
            # least float32: under autocast the features are bfloat16, which would round box corners.
            dtype = torch.promote_types(features.dtype, torch.float32)
            proposals = [
                p.to(dtype) * torch.tensor([w / ow, h / oh, w / ow, h / oh], dtype=dtype, device=features.device)
                for p, (h, w), (oh, ow) in zip(proposals, image_list.image_sizes, original_sizes)
            ]
        else:
            assert self.rpn is not None
            proposals, rpn_losses = self.rpn(features, image_list.image_sizes, targets)
            losses.update(rpn_losses)

        detections, head_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            losses.update(head_losses)
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
