"""RoI heads: proposal sampling, RoI pooling, box head, predictor (the "Fast R-CNN" part).

Shape shorthand:
    N: images in the batch
    P: proposals of one image (plus its G ground-truth boxes in training)
    R: sampled RoIs in the batch (N * batch_size_per_image at most)
    K: object classes (labels 1..K, 0 = background)

Training (Fast R-CNN 2.3): the ground-truth boxes are added to the proposals (so early in training,
when the RPN proposes nothing useful, the head still sees positives), each proposal is matched to the
ground truth (IoU >= 0.5 foreground, < 0.5 background), and ``batch_size_per_image`` RoIs are sampled
at up to ``positive_fraction`` foreground. The pooler (RoIPool or RoIAlign, chosen by config) turns
each RoI into a fixed k x k feature, which is the heart of the seed's comparison.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from detector.errors import ConfigError
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.roi_heads.fast_rcnn import (
    FastRCNNPredictor,
    fast_rcnn_inference,
    fast_rcnn_losses,
)
from detector.modeling.sampler import STREAM_ROI, BalancedPositiveNegativeSampler, sample_generator


class RoIHeads(nn.Module):
    """Classifies and refines proposals; returns detections (eval) or losses (training)."""

    def __init__(
        self,
        *,
        pooler: nn.Module,
        box_head: nn.Module,
        predictor: FastRCNNPredictor,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedPositiveNegativeSampler,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        proposal_append_gt: bool = True,
        smooth_l1_beta: float = 1.0,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = predictor
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ConfigError(f"nms_thresh is an IoU in (0, 1], got {nms_thresh!r}")
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ConfigError(f"score_thresh is a probability in [0, 1], got {score_thresh!r}")
        self.detections_per_img = int(detections_per_img)
        self.proposal_append_gt = bool(proposal_append_gt)
        self.smooth_l1_beta = float(smooth_l1_beta)
        # 0 trains the RPN alone (steps 1 and 3 of the paper's alternating training): the head still
        # runs, but sends no gradient to itself or to the shared layers.
        self.loss_weight = float(loss_weight)

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sample RoIs for training.

        Returns:
            sampled proposals (list of N [Ri, 4]), gt_classes int64 [R] (0 = background) and
            regression_targets [R, 4].
        """
        sampled_proposals, gt_classes, regression_targets = [], [], []
        for proposals_i, target in zip(proposals, targets):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            if self.proposal_append_gt:
                proposals_i = torch.cat([proposals_i, gt_boxes.to(proposals_i.dtype)])
            matched_idxs = self.matcher(box_iou(gt_boxes, proposals_i))
            if gt_boxes.numel() > 0:
                classes = gt_labels[matched_idxs.clamp(min=0)].clone()
                matched_boxes = gt_boxes[matched_idxs.clamp(min=0)]
            else:
                classes = torch.zeros_like(matched_idxs)
                matched_boxes = torch.zeros_like(proposals_i)
            classes[matched_idxs == Matcher.BELOW_LOW_THRESHOLD] = 0
            classes[matched_idxs == Matcher.BETWEEN_THRESHOLDS] = -1
            pos_mask, neg_mask = self.sampler(classes, generator=sample_generator(target, STREAM_ROI))
            keep = torch.nonzero(pos_mask | neg_mask).squeeze(1)
            sampled_proposals.append(proposals_i[keep])
            gt_classes.append(classes[keep].clamp(min=0))
            regression_targets.append(self.box_coder.encode(proposals_i[keep], matched_boxes[keep]))
        return sampled_proposals, torch.cat(gt_classes), torch.cat(regression_targets)

    def pool(self, features: Tensor, proposals: list[Tensor]) -> Tensor:
        """The pooler on ``features`` [N, C, Hf, Wf] and proposals (N [P, 4]) -> [R, C, k, k], in features' dtype.

        Under autocast the map arrives in bfloat16 or float16 while the proposals are float32. The
        pooler runs with autocast off and is given the map as it is: each operator keeps its
        geometry in float32 and decides where its sums need float32 (the CPU gather kernels pool a
        bf16 map directly and sum its gradient in float32; torchvision's kernels on CUDA get a float32
        copy, as torchvision's own autocast wrappers give them). Pooling the bf16 map directly saves
        the float32 copy of the output and its cast back, which at inference (1000 RoIs per image)
        cost more than the pooling itself (docs/precision.md).
        """
        if features.dtype not in (torch.bfloat16, torch.float16):
            return self.pooler(features, proposals)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.pooler(features, proposals).to(features.dtype)

    def forward(
        self,
        features: Tensor,
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Run the head.

        Args:
            features: [N, C, Hf, Wf]; proposals: N tensors [P, 4] in resized-image pixels.

        Returns:
            (detections, losses): detections per image in eval mode (empty list in training),
            the loss dict in training (empty in eval).
        """
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads needs targets in training mode")
            proposals, gt_classes, regression_targets = self.label_and_sample_proposals(
                proposals, targets
            )
        pooled = self.pool(features, proposals)  # [R, C, k, k]
        class_logits, box_deltas = self.predictor(self.box_head(pooled))
        # Under autocast the linear layers return bfloat16/float16: scores that rank detections and
        # deltas that move boxes are taken in float32 (bf16 keeps 8 bits: a few pixels at 800).
        class_logits, box_deltas = class_logits.float(), box_deltas.float()

        if self.training:
            losses = fast_rcnn_losses(
                class_logits, box_deltas, gt_classes, regression_targets,
                smooth_l1_beta=self.smooth_l1_beta,
            )
            return [], {k: v * self.loss_weight for k, v in losses.items()}
        detections = fast_rcnn_inference(
            class_logits, box_deltas, proposals, image_sizes,
            box_coder=self.box_coder, score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
        )
        return detections, {}
