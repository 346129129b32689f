"""Our RPN and RoI-head losses against torchvision's, on the same inputs and the same sampled minibatch.

The samplers draw at random, so torchvision's sampler is replaced by one that returns our draw; the
matching, the target encoding and the loss formulas are then each library's own. The settings are the
ones both use: RPN IoU 0.7 / 0.3 with low-quality matches, box weights (1, 1, 1, 1), smooth L1 beta 1/9;
RoI heads IoU 0.5, box weights (10, 10, 5, 5) and (torchvision's choice; ours is 1.0 by default, the
Fast R-CNN paper's) beta 1/9.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.models.detection.rpn import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead

from conftest import tiny_model

IMAGE_SIZES = [(128, 160), (128, 128)]


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [100.0, 40.0, 150.0, 120.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[30.0, 30.0, 70.0, 110.0]]), "labels": torch.tensor([2])},
    ]


def _recording(sampler, seen):
    def spy(labels, **kwargs):
        pos, neg = sampler(labels, **kwargs)
        seen.append((labels.clone(), pos, neg))
        return pos, neg
    return spy


def _replay(seen):
    """torchvision's fg_bg_sampler interface (lists of per-image uint8 masks), returning our draw."""
    return lambda labels: ([p.to(torch.uint8) for _, p, _ in seen], [n.to(torch.uint8) for _, _, n in seen])


def test_rpn_losses_equal_torchvisions_on_our_sampled_anchors():
    torch.manual_seed(0)
    rpn = tiny_model(num_classes=3).rpn
    # Small minibatches, so that the sampled subset is a real choice among the anchors.
    rpn.sampler.batch_size_per_image = 32
    anchors = rpn.anchor_generator((4, 5))  # [M, 4], the stride-32 map of a 128 x 160 image
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, anchors.shape[0], generator=g)
    deltas = 0.2 * torch.randn(2, anchors.shape[0], 4, generator=g)
    seen = []
    rpn.sampler = _recording(rpn.sampler, seen)
    ours = rpn._losses(anchors, logits, deltas, IMAGE_SIZES, _targets())

    tv = RegionProposalNetwork(
        TVAnchorGenerator(), TVRPNHead(8, 15), fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=32,
        positive_fraction=0.5, pre_nms_top_n={"training": 10, "testing": 10},
        post_nms_top_n={"training": 10, "testing": 10}, nms_thresh=0.7,
    )
    labels, matched = tv.assign_targets_to_anchors([anchors, anchors], _targets())
    for (our_labels, _, _), their_labels in zip(seen, labels):
        assert torch.equal(our_labels.float(), their_labels)  # the same matching, before sampling
    regression_targets = tv.box_coder.encode(matched, [anchors, anchors])
    tv.fg_bg_sampler = _replay(seen)
    objectness, box = tv.compute_loss(logits.reshape(-1, 1), deltas.reshape(-1, 4), labels, regression_targets)
    assert sum(int(p.sum()) for _, p, _ in seen) > 0  # positives exist: the box loss is not 0 == 0
    torch.testing.assert_close(ours["loss_rpn_cls"], objectness)
    torch.testing.assert_close(ours["loss_rpn_box"], box)


def test_roi_losses_equal_torchvisions_on_our_sampled_rois():
    torch.manual_seed(0)
    heads = tiny_model(num_classes=3, overrides=["model.roi_heads.smooth_l1_beta=0.1111111111111111",
                                                 "model.roi_heads.sampler.batch_size_per_image=16"]).roi_heads
    g = torch.Generator().manual_seed(2)
    proposals = []
    for h, w in IMAGE_SIZES:
        xy = torch.rand(40, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 8 + torch.rand(40, 2, generator=g) * 60
        proposals.append(torch.cat([xy, xy + wh], dim=1))
    seen = []
    heads.sampler = _recording(heads.sampler, seen)
    sampled, gt_classes, regression_targets = heads.label_and_sample_proposals(proposals, _targets())

    tv = TVRoIHeads(None, None, None, fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=16,
                    positive_fraction=0.25, bbox_reg_weights=(10.0, 10.0, 5.0, 5.0), score_thresh=0.05,
                    nms_thresh=0.5, detections_per_img=100)
    tv.fg_bg_sampler = _replay(seen)
    their_proposals, _, labels, their_targets = tv.select_training_samples(
        [p.clone() for p in proposals], _targets())
    torch.testing.assert_close(torch.cat(sampled), torch.cat(their_proposals))  # the ground truth appended alike
    assert torch.equal(gt_classes, torch.cat(labels)) and int((gt_classes > 0).sum()) > 0
    torch.testing.assert_close(regression_targets, torch.cat(their_targets))

    class_logits = torch.randn(gt_classes.numel(), 4, generator=g)
    box_deltas = 0.3 * torch.randn(gt_classes.numel(), 16, generator=g)
    from detector.modeling.roi_heads.fast_rcnn import fast_rcnn_losses

    ours = fast_rcnn_losses(class_logits, box_deltas, gt_classes, regression_targets, smooth_l1_beta=heads.smooth_l1_beta)
    cls, box = fastrcnn_loss(class_logits, box_deltas, list(labels), list(their_targets))
    torch.testing.assert_close(ours["loss_roi_cls"], cls)
    torch.testing.assert_close(ours["loss_roi_box"], box)
