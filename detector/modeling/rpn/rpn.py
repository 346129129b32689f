"""Region Proposal Network (Ren et al., Faster R-CNN, NeurIPS 2015, section 3.1).

Shape shorthand:
    N: images in the batch
    A: anchors per location;  M = Hf * Wf * A anchors per image
    G: ground-truth boxes in one image
    P: proposals kept per image (post-NMS top-k)

Training: every anchor is labelled by IoU with the ground truth (>= 0.7 positive, < 0.3 negative,
plus each object's best anchor), 256 anchors per image are sampled at up to 1:1, and the losses are
binary cross-entropy on objectness and smooth L1 on the deltas of positive anchors, both averaged over
the sampled anchors (equation 1 with lambda chosen so the two terms weigh alike).

Proposals: decode all deltas, keep the ``pre_nms_topk`` highest-scoring anchors per image, clip to the
image, drop boxes smaller than ``min_size``, non-maximum suppression at ``nms_thresh``
(torchvision.ops.nms; the images side by side, stopping once ``post_nms_topk`` are kept:
:mod:`detector.ops.nms`), keep the ``post_nms_topk`` best. Train and test use separate top-k
values (12000/2000 and 6000/300 in the paper). Proposals are detached: the RoI heads do not
back-propagate into box coordinates (the "approximate joint training" of section 3.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import box_iou, clip_boxes_to_image, nms, remove_small_boxes

from detector.errors import ConfigError
from detector.modeling.box_coder import BoxCoder
from detector.modeling.matcher import Matcher
from detector.modeling.rpn.anchor_generator import AnchorGenerator
from detector.modeling.rpn.rpn_head import RPNHead
from detector.modeling.sampler import STREAM_RPN, BalancedPositiveNegativeSampler, sample_generator
from detector.ops.dense import exporting, pad_indices
from detector.ops.nms import nms_each


class RPN(nn.Module):
    """Proposes boxes from a single feature map; returns proposals and (in training) losses."""

    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedPositiveNegativeSampler,
        pre_nms_topk_train: int = 12000,
        post_nms_topk_train: int = 2000,
        pre_nms_topk_test: int = 6000,
        post_nms_topk_test: int = 300,
        nms_thresh: float = 0.7,
        min_size: float = 0.0,
        smooth_l1_beta: float = 1.0 / 9,
        boundary_thresh: float = -1.0,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if head.objectness_logits.out_channels != anchor_generator.num_anchors_per_location:
            raise ConfigError(
                f"the RPN head predicts {head.objectness_logits.out_channels} anchors per location "
                f"but the anchor generator makes {anchor_generator.num_anchors_per_location} "
                f"(len(sizes) * len(aspect_ratios)): build the head with num_anchors to match"
            )
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.pre_nms_topk = {True: int(pre_nms_topk_train), False: int(pre_nms_topk_test)}
        self.post_nms_topk = {True: int(post_nms_topk_train), False: int(post_nms_topk_test)}
        self.nms_thresh = float(nms_thresh)
        if not 0.0 < self.nms_thresh <= 1.0:
            raise ConfigError(f"nms_thresh is an IoU in (0, 1], got {nms_thresh!r}")
        self.min_size = float(min_size)
        # beta = 1/9 is py-faster-rcnn's rpn sigma = 3 (beta = 1 / sigma**2).
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.boundary_thresh = float(boundary_thresh)
        self.loss_weight = float(loss_weight)

    def forward(
        self,
        features: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Propose boxes.

        Args:
            features: [N, C, Hf, Wf] backbone output.
            image_sizes: (h, w) of each image inside the padded batch (after resizing).
            targets: per image dict with ``boxes`` [G, 4] in the same (resized) coordinates.

        Returns:
            proposals: list of N tensors [P, 4] (detached), and a loss dict (empty in eval mode).
        """
        anchors, logits, deltas = self._predict(features)
        proposals, _ = self.find_proposals(anchors, logits.detach(), deltas.detach(), image_sizes)

        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN needs targets in training mode")
            losses = self._losses(anchors, logits, deltas, image_sizes, targets)
        return proposals, losses

    @torch.no_grad()
    def propose(self, features: Tensor, image_sizes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor]]:
        """Proposals and their objectness logits (N lists of [P, 4], [P]), best first; no losses.

        What ``tools/dump_proposals.py`` stores (the scores let a reader keep its own top-k).
        """
        anchors, logits, deltas = self._predict(features)
        return self.find_proposals(anchors, logits, deltas, image_sizes)

    def _predict(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The head on every anchor: anchors [M, 4], objectness logits [N, M], deltas [N, M, 4]."""
        num_images = features.shape[0]
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(features.shape[-2:])  # [M, 4]
        # [N, A, Hf, Wf] -> [N, Hf, Wf, A] -> [N, M];  [N, 4A, Hf, Wf] -> [N, Hf, Wf, A, 4] -> [N, M, 4]
        a = self.anchor_generator.num_anchors_per_location
        hf, wf = logits.shape[-2:]
        logits = logits.permute(0, 2, 3, 1).reshape(num_images, -1)
        deltas = deltas.view(num_images, a, 4, hf, wf).permute(0, 3, 4, 1, 2).reshape(num_images, -1, 4)
        # Under autocast the head's convs return bfloat16/float16: the logits rank anchors for the
        # top-k and the deltas move boxes, so both continue in float32 (as the anchors are).
        return anchors, logits.float(), deltas.float()

    @torch.no_grad()
    def find_proposals(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Decode, clip, NMS and keep the top-k per image: (N lists of boxes [P, 4], logits [P])."""
        pre_k = self.pre_nms_topk[self.training]
        post_k = self.post_nms_topk[self.training]
        if exporting():
            return self._fixed_shape_proposals(anchors, logits, deltas, image_sizes, pre_k, post_k)
        candidates, candidate_scores = [], []
        for logits_i, deltas_i, image_size in zip(logits, deltas, image_sizes):
            # Top-k before decoding: decoding and NMS on all anchors would be wasted work.
            k = min(pre_k, logits_i.numel())
            scores, idx = logits_i.topk(k)
            boxes = self.box_coder.decode(deltas_i[idx], anchors[idx])
            boxes = clip_boxes_to_image(boxes, image_size)
            keep = remove_small_boxes(boxes, self.min_size) if self.min_size > 0 else None
            if keep is not None:
                boxes, scores = boxes[keep], scores[keep]
            # Zero-area boxes (clipped to the image border) cannot be pooled meaningfully.
            nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            candidates.append(boxes[nonempty])
            candidate_scores.append(scores[nonempty])
        # Each image's NMS on its own core, stopping once post_k boxes are kept (detector.ops.nms):
        # the same kept boxes as a loop of torchvision's NMS cut to post_k.
        keeps = nms_each(candidates, candidate_scores, self.nms_thresh, max_kept=post_k)
        proposals = [boxes[keep] for boxes, keep in zip(candidates, keeps)]
        proposal_scores = [scores[keep] for scores, keep in zip(candidate_scores, keeps)]
        return proposals, proposal_scores

    def _fixed_shape_proposals(self, anchors, logits, deltas, image_sizes, pre_k, post_k):
        """:meth:`find_proposals` for an exported program: exactly ``post_k`` proposals per image.

        The same boxes in the same order; where NMS leaves fewer, the rest are the zero-size box at
        the origin (score -inf), which pools to something but can never become a detection (a
        detection needs a positive width, :func:`fast_rcnn_inference`). A box the eager path drops
        before NMS (too small, or empty after clipping) gets score -inf instead and is padding too.
        """
        proposals, proposal_scores = [], []
        for logits_i, deltas_i, image_size in zip(logits, deltas, image_sizes):
            scores, idx = logits_i.topk(torch.sym_min(pre_k, logits_i.numel()))
            boxes = clip_boxes_to_image(self.box_coder.decode(deltas_i[idx], anchors[idx]), image_size)
            valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if self.min_size > 0:
                valid &= ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
            scores = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
            keep = pad_indices(nms(boxes, scores, self.nms_thresh), post_k)
            kept = keep >= 0
            kept &= scores[keep.clamp(min=0)] > -torch.inf
            proposals.append(torch.where(kept[:, None], boxes[keep.clamp(min=0)], torch.zeros_like(boxes[:1])))
            proposal_scores.append(torch.where(kept, scores[keep.clamp(min=0)], torch.full_like(scores[:1], -torch.inf)))
        return proposals, proposal_scores

    def _losses(
        self,
        anchors: Tensor,
        logits: Tensor,
        deltas: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        labels, regression_targets = [], []
        for target, image_size in zip(targets, image_sizes):
            gt_boxes = target["boxes"]
            iou = box_iou(gt_boxes, anchors)  # [G, M]
            inside = None
            if self.boundary_thresh >= 0:
                # The paper ignores anchors that cross the image boundary in training (3.3: they
                # "introduce large, difficult to correct error terms"), and matches only the inside
                # ones, so an object's best anchor is never a crossing one. Off by default (-1), as
                # in detectron2 and torchvision: on small images at stride 32 most large anchors cross.
                h, w = image_size
                t = self.boundary_thresh
                inside = (
                    (anchors[:, 0] >= -t) & (anchors[:, 1] >= -t)
                    & (anchors[:, 2] < w + t) & (anchors[:, 3] < h + t)
                )
                iou[:, ~inside] = -1.0
            matched_idxs = self.matcher(iou)  # [M]
            labels_i = (matched_idxs >= 0).to(torch.int64)  # 1 fg, 0 bg
            labels_i[matched_idxs == Matcher.BETWEEN_THRESHOLDS] = -1
            if inside is not None:
                labels_i[~inside] = -1
            pos_mask, neg_mask = self.sampler(labels_i, generator=sample_generator(target, STREAM_RPN))
            sampled = torch.full_like(labels_i, -1)
            sampled[pos_mask] = 1
            sampled[neg_mask] = 0
            labels.append(sampled)
            if gt_boxes.numel() > 0:
                matched = gt_boxes[matched_idxs.clamp(min=0)]
            else:
                matched = torch.zeros_like(anchors)
            regression_targets.append(self.box_coder.encode(anchors, matched))

        labels_t = torch.stack(labels)  # [N, M]
        targets_t = torch.stack(regression_targets)  # [N, M, 4]
        sampled_mask = labels_t >= 0
        pos_mask = labels_t == 1
        # Normalised by the number of sampled anchors (N * 256), not by positives, so an image with
        # few objects does not get a louder box loss (Faster R-CNN eq. 1, N_cls ~ N_reg balance).
        normalizer = max(int(sampled_mask.sum()), 1)
        loss_cls = F.binary_cross_entropy_with_logits(
            logits[sampled_mask], labels_t[sampled_mask].to(logits.dtype), reduction="sum"
        ) / normalizer
        loss_loc = F.smooth_l1_loss(
            deltas[pos_mask], targets_t[pos_mask], beta=self.smooth_l1_beta, reduction="sum"
        ) / normalizer
        return {
            "loss_rpn_cls": loss_cls * self.loss_weight,
            "loss_rpn_box": loss_loc * self.loss_weight,
        }
