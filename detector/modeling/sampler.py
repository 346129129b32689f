"""Balanced positive/negative sampler for RPN anchors and RoI-head proposals.

Shape shorthand:
    P: number of candidates (anchors or proposals) in one image

Most candidates are background; training on all of them would drown the few positives. Both stages
sample a fixed minibatch per image with at most a fixed fraction of positives, filling the rest with
negatives: 256 anchors at 1:1 for the RPN (Faster R-CNN 3.1.3) and 128 RoIs at 25 % foreground per
image for Fast R-CNN (Fast R-CNN 2.3; 512 per image in detectron2/torchvision defaults).
Where the draws come from: a target may carry ``sample_seed`` (an int the training stream gives
each sample, :mod:`detector.data.sampler`); then the image's draws come from a generator seeded by it,
so they are a function of the sample alone -- the same in one process or in any rank of N, which is
what lets data-parallel training reproduce a one-process run of the same global batch. Targets
without it (a user's own loop, torchvision's contract) draw from the global torch RNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

# One stream per consumer of a sample's seed, so that the RPN's and the RoI head's draws (and the
# multi-scale size) are unrelated although they share the sample's seed.
STREAM_SCALE, STREAM_RPN, STREAM_ROI = 1, 2, 3


def sample_generator(target: Mapping[str, Any] | None, stream: int) -> torch.Generator | None:
    """A CPU generator for ``stream`` of this sample, or None when the target has no ``sample_seed``."""
    seed = None if target is None else target.get("sample_seed")
    if seed is None:
        return None
    return torch.Generator().manual_seed((int(seed) + int(stream)) & (2**63 - 1))


def randperm(n: int, *, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``torch.randperm(n)`` on ``device``: from ``generator`` (drawn on the CPU) when given."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator).to(device)


class BalancedPositiveNegativeSampler:
    """Sample up to ``batch_size_per_image`` candidates with at most ``positive_fraction`` positives."""

    def __init__(self, *, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, labels: Tensor, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample one image.

        Args:
            labels: int64 [P]; >= 1 positive, 0 negative, -1 ignored.
            generator: the image's own CPU generator (:func:`sample_generator`); None: the global RNG.

        Returns:
            (pos_mask, neg_mask): bool [P] each, disjoint.
        """
        positive = torch.nonzero(labels >= 1).squeeze(1)
        negative = torch.nonzero(labels == 0).squeeze(1)

        num_pos = min(int(self.batch_size_per_image * self.positive_fraction), positive.numel())
        # Fill the remainder with negatives, so the minibatch keeps its size when positives are few.
        num_neg = min(self.batch_size_per_image - num_pos, negative.numel())

        pos_idx = positive[randperm(positive.numel(), device=labels.device, generator=generator)[:num_pos]]
        neg_idx = negative[randperm(negative.numel(), device=labels.device, generator=generator)[:num_neg]]

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
