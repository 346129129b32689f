"""Matcher: assigns each prediction (anchor or proposal) to its best ground-truth box, or to none.

Shape shorthand:
    G: number of ground-truth boxes in one image
    P: number of predictions (anchors or proposals) in one image

The rule of Faster R-CNN (Ren et al. 2015, section 3.1.2) and Fast R-CNN (Girshick 2015, 2.3):
a prediction whose best IoU is >= ``high_threshold`` is matched to that ground truth (foreground),
< ``low_threshold`` is background, and in between is ignored (no loss). With
``allow_low_quality_matches`` each ground truth also keeps the predictions of its highest IoU even
below the threshold, so that every object gets at least one positive anchor ("the anchor/anchors with
the highest IoU overlap with a ground-truth box", Faster R-CNN 3.1.2, condition (i)).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Matcher:
    """Match predictions to ground truth by IoU with two thresholds."""

    BELOW_LOW_THRESHOLD = -1  # background
    BETWEEN_THRESHOLDS = -2  # ignored

    def __init__(
        self, *, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """Match.

        Args:
            match_quality_matrix: [G, P] IoU of every ground truth with every prediction.

        Returns:
            matched_idxs: int64 [P]; index of the matched ground truth in 0..G-1, or
            ``BELOW_LOW_THRESHOLD`` (-1) for background, ``BETWEEN_THRESHOLDS`` (-2) for ignored.
        """
        num_gt, num_pred = match_quality_matrix.shape
        if num_gt == 0 or num_pred == 0:
            # No object in the image: every prediction is background.
            return torch.full(
                (num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64,
                device=match_quality_matrix.device,
            )
        matched_vals, matched_idxs = match_quality_matrix.max(dim=0)
        all_matches = matched_idxs.clone() if self.allow_low_quality_matches else None

        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matched_idxs[below] = self.BELOW_LOW_THRESHOLD
        matched_idxs[between] = self.BETWEEN_THRESHOLDS

        if all_matches is not None:
            # For each gt, every prediction that ties for its highest IoU becomes a match (ties are
            # common between anchors of the same shape at neighbouring positions).
            highest_per_gt, _ = match_quality_matrix.max(dim=1)
            gt_idx, pred_idx = torch.nonzero(
                (match_quality_matrix == highest_per_gt[:, None]) & (highest_per_gt[:, None] > 0),
                as_tuple=True,
            )
            matched_idxs[pred_idx] = all_matches[pred_idx]
        return matched_idxs

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )
