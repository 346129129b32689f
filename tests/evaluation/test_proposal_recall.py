"""Proposal recall on hand-computed cases: greedy one-to-one matching, limits, AR."""

import pytest
import torch

from detector.evaluation.proposal_recall import proposal_recall


def test_known_case():
    gt = {1: torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10]]), 2: torch.tensor([[0.0, 0, 10, 10]])}
    props = {
        # image 1: a perfect box for object 0, then one at IoU 0.6 with object 1 (shifted by 2.5 of 10)
        1: torch.tensor([[0.0, 0, 10, 10], [22.5, 0, 32.5, 10]]),
        2: torch.tensor([[50.0, 50, 60, 60], [0, 0, 10, 8]]),  # IoU 0.8 only as the 2nd proposal
    }
    r = proposal_recall(props, gt, limits=(1, 2), thresholds=(0.5, 0.7))
    assert r["recall@1@0.5"] == pytest.approx(1 / 3) and r["recall@2@0.5"] == pytest.approx(1.0)
    assert r["recall@2@0.7"] == pytest.approx(2 / 3)
    # AR@2: object overlaps 1.0, 0.6, 0.8 -> over thresholds .50:.05:.95: (10 + 3 + 7) / 30
    iou_shift = 7.5 / 12.5
    assert iou_shift == pytest.approx(0.6)
    assert r["AR@2"] == pytest.approx((10 + 3 + 7) / 30)
    assert r["num_objects"] == 3 and r["mean_proposals"] == 2


def test_one_proposal_covers_one_object_only():
    gt = {1: torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])}
    r = proposal_recall({1: torch.tensor([[0.0, 0, 10, 10]])}, gt, limits=(10,), thresholds=(0.5,))
    assert r["recall@10@0.5"] == pytest.approx(0.5)
