"""Balanced positive/negative sampler for RPN anchors and RoI-head proposals.

Shape shorthand:
    P: number of candidates (anchors or proposals) in one image

Most candidates are background; training on all of them would drown the few positives. Both stages
sample a fixed minibatch per image with at most a fixed fraction of positives, filling the rest with
negatives: 256 anchors at 1:1 for the RPN (Faster R-CNN 3.1.3) and 128 RoIs at 25 % foreground per
image for Fast R-CNN (Fast R-CNN 2.3; 512 per image in detectron2/torchvision defaults).
Sampling uses ``torch.randperm`` on the candidates' device, so it follows the global torch seed.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedPositiveNegativeSampler:
    """Sample up to ``batch_size_per_image`` candidates with at most ``positive_fraction`` positives."""

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Sample one image.

        Args:
            labels: int64 [P]; >= 1 positive, 0 negative, -1 ignored.

        Returns:
            (pos_mask, neg_mask): bool [P] each, disjoint.
        """
        positive = torch.nonzero(labels >= 1).squeeze(1)
        negative = torch.nonzero(labels == 0).squeeze(1)

        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
        # Fill the remainder with negatives, so the minibatch keeps its size when positives are few.
        num_neg = min(self.batch_size_per_image - num_pos, negative.numel())

        pos_idx = positive[torch.randperm(positive.numel(), device=labels.device)[:num_pos]]
        neg_idx = negative[torch.randperm(negative.numel(), device=labels.device)[:num_neg]]

        pos_mask = torch.zeros_like(labels, dtype=torch.bool)
        neg_mask = torch.zeros_like(labels, dtype=torch.bool)
        pos_mask[pos_idx] = True
        neg_mask[neg_idx] = True
        return pos_mask, neg_mask

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )
