"""A training stream that is a pure function of (seed, position): exact resume, any worker count.

detectron2's ``TrainingSampler`` is an infinite, seeded, rank-sharded stream of indices; it can not
start in the middle, and the augmentation's random draws depend on which worker loaded a sample.
Here the stream is one of *positions* ``0, 1, 2, ...`` (sample number ``p`` of the run), and
:class:`PositionedDataset` turns a position into a sample deterministically:

* ``epoch = p // N``, and the epoch's order is ``randperm(N)`` from a generator seeded with
  ``(seed, epoch)``: sample ``p`` is image ``order[p % N]``;
* the augmentation (albumentations' own generators) is reseeded with ``(seed, p)`` before the sample
  is drawn, so its flip or crop does not depend on the worker, the number of workers, or what that
  worker loaded before;
* the target carries ``sample_seed``, also a function of ``(seed, p)``, from which the model draws
  this image's random choices (the RPN's and RoI head's minibatches, a multi-scale size:
  :mod:`detector.modeling.sampler`), so they do not depend on the process either.

With ``groups`` (aspect-ratio grouping, as detectron2's ``AspectRatioGroupedDataset`` and torchvision's
``GroupedBatchSampler`` do it), each epoch's order is rearranged so that every global batch holds
images of one group (landscape or portrait): a batch is padded to its largest height and width, so a
landscape image batched with a portrait one pads both to a square. The peers' versions buffer
images as they arrive, which makes the batches depend on the workers' timing and breaks exact
resume; here the rearrangement is part of the epoch's order, again a function of ``(seed, epoch)``:
the permutation's items, group by group, are cut into blocks of one global batch; the blocks are
shuffled; the few items left over form the epoch's last, mixed batch. The blocks start on the
stream's batch boundaries (the first items of an epoch complete the previous epoch's last batch),
so at most two batches per epoch mix the groups.

A run that resumes at iteration ``i`` starts the stream at ``i * global_batch`` and sees exactly the
samples, in the same order and with the same augmentation, that the uninterrupted run saw. With
several processes (DDP), rank ``r`` of ``W`` takes positions ``start + r, start + r + W, ...``: the
global batch of an iteration, and every random draw made for it, is the same whatever ``W`` is.

Shape shorthand:
    N: images in the dataset; W: processes (world size); B: global batch (images per iteration over
    all processes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["PositionedDataset", "TrainingSampler", "orientation_groups"]

_SEED_MODULUS = 2**32  # albumentations seeds are 32-bit


class TrainingSampler(Sampler[int]):
    """Infinite positions ``start + rank, start + rank + W, ...`` (never ends: the loop counts iterations)."""

    def __init__(self, *, start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
        self.start, self.rank, self.world_size = int(start), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        while True:
            yield position
            position += self.world_size


class PositionedDataset(Dataset):
    """``dataset`` read by position: shuffled epoch after epoch, augmentation seeded per sample."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        seed: int,
        shuffle: bool = True,
        groups: Sequence[int] | None = None,
        group_size: int = 1,
    ) -> None:
        """``groups``: a group id per image (e.g. :func:`orientation_groups`); with ``group_size`` B > 1
        (the global batch) every aligned run of B positions holds one group, but at most two per epoch."""
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        if groups is not None and len(groups) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(f"{len(groups)} group ids for {len(dataset)} images")  # type: ignore[arg-type]
        self.groups = torch.as_tensor(list(groups), dtype=torch.int64) if groups is not None else None
        self.group_size = int(group_size)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation), cached

    def __len__(self) -> int:  # the loop is iteration-based; this is the number of distinct images
        return len(self.dataset)  # type: ignore[arg-type]

    def index(self, position: int) -> int:
        """The image index of sample ``position``."""
        n = len(self.dataset)  # type: ignore[arg-type]
        epoch, offset = divmod(int(position), n)
        if not self.shuffle:
            return offset
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._epoch_order(epoch, n))
        return int(self._order[1][offset])

    def _epoch_order(self, epoch: int, n: int) -> torch.Tensor:
        """Epoch ``epoch``'s permutation of the ``n`` images, grouped into batches when ``groups`` is set."""
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(n, generator=generator)
        if self.groups is None or self.group_size <= 1:
            return order
        size = self.group_size
        # The epoch starts at position epoch * n; its first `head` items finish the batch that the
        # previous epoch's leftovers began, so that the blocks below start on batch boundaries.
        head = (-epoch * n) % size
        rest = order[head:]
        blocks, leftovers = [], []
        for group in torch.unique(self.groups).tolist():
            members = rest[self.groups[rest] == group]  # in the permutation's order
            full = len(members) // size * size
            blocks.extend(members[:full].split(size))
            leftovers.append(members[full:])
        blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=generator).tolist()]
        return torch.cat([order[:head], *blocks, *leftovers])

    def __getitem__(self, position: int) -> Any:
        transforms = getattr(self.dataset, "transforms", None)
        if transforms is not None and hasattr(transforms, "set_random_seed"):
            transforms.set_random_seed(_mix(self.seed, int(position)) % _SEED_MODULUS)
        sample = self.dataset[self.index(position)]
        if isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[1], dict):
            image, target = sample
            sample = image, {**target, "sample_seed": _mix(_mix(self.seed, int(position)), 1)}
        return sample

    def __getattr__(self, name: str) -> Any:
        # class_names, coco, source, ... of the wrapped dataset (not called for own attributes)
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def orientation_groups(dataset: Any) -> list[int] | None:
    """0 for each landscape or square image, 1 for each portrait one; None if ``dataset`` has no
    ``aspect_ratios()`` (width / height per index, read from its annotations without decoding)."""
    ratios = getattr(dataset, "aspect_ratios", None)
    if ratios is None:
        return None
    return [0 if r >= 1.0 else 1 for r in ratios()]


def _mix(seed: int, value: int) -> int:
    """A 63-bit seed from (seed, value), so that neighbouring values give unrelated streams."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(value) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 29
    return x & (2**63 - 1)
