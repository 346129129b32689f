"""Batching for detection: images of different sizes, reproducible shuffling and augmentation.

Images are not stacked here: they differ in size, and the model resizes and pads them itself. A batch
is therefore a list of ``[3, H_i, W_i]`` tensors and a list of target dicts (torchvision's contract).

Reproducibility. Two loaders built with the same ``seed`` over the same dataset yield identical
batches, augmentation included, whatever ``num_workers`` is:

* The shuffle order comes from a ``torch.Generator`` seeded with ``seed`` and owned by the loader.
* albumentations (>= 2) draws from its own generators inside each ``Compose``, not from the global
  ``numpy``/``random`` state that PyTorch seeds in every worker. So the dataset's ``transforms`` are
  reseeded explicitly at the start of each epoch: in each worker from the worker seed PyTorch derives
  from the loader's generator (``base_seed + worker_id``, a fresh ``base_seed`` per epoch), and with
  ``num_workers=0`` in the main process from a second generator seeded with ``seed``. Either way
  consecutive epochs get different augmentations, and workers do not repeat each other's.

Shape shorthand:
    B: number of images in a batch.
    H_i, W_i: height and width of image i (they differ within a batch).
    N_i: number of boxes of image i.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, get_worker_info

__all__ = ["build_detection_loader", "build_training_loader", "collate_detection"]

_SEED_MODULUS = 2**32  # numpy / albumentations seeds must fit in 32 bits (here: unsigned)


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Turn ``B`` samples ``(image [3, H_i, W_i], target)`` into ``(images, targets)`` lists of length B."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def build_detection_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A seeded, reproducible :class:`~torch.utils.data.DataLoader` for detection datasets.

    Args:
        dataset: Map-style dataset of ``(image, target)`` pairs, e.g.
            :class:`~detector.data.coco.CocoDetection`, or a ``Subset``/``ConcatDataset`` of them.
            Its ``transforms`` are reseeded if they have ``set_random_seed`` (albumentations).
        batch_size: Images per batch.
        shuffle: Reshuffle at every epoch (training) or keep dataset order (evaluation).
        num_workers: Worker processes for loading; 0 loads in the main process.
        seed: Seed of the shuffle order and of the augmentation.
        drop_last: Drop the last incomplete batch.

    Returns:
        A DataLoader yielding ``(list of B images [3, H_i, W_i], list of B target dicts)``.
    """
    return _SeededDetectionLoader(
        dataset,
        augmentation_seed=seed,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_detection,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker_transforms,
        drop_last=drop_last,
    )


def build_training_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    seed: int,
    start: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    aspect_ratio_grouping: bool = False,
) -> DataLoader:
    """The training stream: an endless loader whose batches are a pure function of (seed, position).

    Sample ``p`` of the run is image ``order_e[p % N]`` of epoch ``e = p // N``, augmented with a
    generator seeded from ``(seed, p)`` (:mod:`detector.data.sampler`). ``start`` is the first
    position, ``iteration * global_batch`` on resume, so a resumed run sees the uninterrupted run's
    batches exactly, whatever ``num_workers`` is; rank ``r`` of ``world_size`` takes every
    ``world_size``-th position.

    Args:
        dataset: The training dataset (its ``transforms`` are reseeded per sample).
        batch_size: Images per batch of this process.
        seed: Seed of the epoch orders and of the augmentation.
        start: Position of the first sample of the whole run this loader yields.
        num_workers: Worker processes for loading; 0 loads in the main process.
        rank, world_size: This process among the data-parallel ones.
        aspect_ratio_grouping: Batch landscape images with landscape ones and portrait with portrait
            (less padding), where the dataset knows its images' sizes (``aspect_ratios()``); the
            grouping is part of each epoch's order, so resume stays exact.
    """
    from detector.data.sampler import PositionedDataset, TrainingSampler, orientation_groups

    groups = orientation_groups(dataset) if aspect_ratio_grouping else None
    return DataLoader(
        PositionedDataset(dataset, seed=seed, groups=groups, group_size=batch_size * world_size),
        batch_size=batch_size,
        sampler=TrainingSampler(start=start, rank=rank, world_size=world_size),
        num_workers=num_workers,
        collate_fn=collate_detection,
        # Its own generator: creating the worker seeds must not draw from the global RNG, which the
        # model's samplers use and a checkpoint restores.
        generator=torch.Generator().manual_seed(seed),
    )


class _SeededDetectionLoader(DataLoader):
    """DataLoader that reseeds the dataset's augmentation at each epoch when loading in-process."""

    def __init__(self, dataset: Dataset, *, augmentation_seed: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        # Separate from the shuffle generator, so that enabling augmentation does not change the order.
        self._augmentation_generator = torch.Generator().manual_seed(augmentation_seed)

    def __iter__(self):  # noqa: D105
        if self.num_workers == 0:
            # Workers are reseeded in `_seed_worker_transforms`; in-process loading has no such hook.
            epoch_seed = int(torch.randint(0, _SEED_MODULUS, (), generator=self._augmentation_generator))
            _reseed_transforms(self.dataset, epoch_seed)
        return super().__iter__()


def _seed_worker_transforms(worker_id: int) -> None:
    """``worker_init_fn``: reseed this worker's copy of the dataset's augmentation.

    PyTorch has already seeded ``random``, ``numpy`` and ``torch`` in the worker from
    ``info.seed = base_seed + worker_id`` (``base_seed`` drawn from the loader's generator each epoch);
    albumentations keeps its own generators, so they get the same seed here.
    """
    info = get_worker_info()
    assert info is not None and info.id == worker_id
    _reseed_transforms(info.dataset, info.seed % _SEED_MODULUS)


def _reseed_transforms(dataset: Dataset, seed: int) -> None:
    """Call ``set_random_seed(seed)`` on the transforms of ``dataset`` (through Subset/ConcatDataset)."""
    if isinstance(dataset, Subset):
        _reseed_transforms(dataset.dataset, seed)
        return
    if isinstance(dataset, ConcatDataset):
        for i, part in enumerate(dataset.datasets):
            _reseed_transforms(part, (seed + i) % _SEED_MODULUS)  # parts must not mirror each other
        return
    transforms = getattr(dataset, "transforms", None)
    if transforms is not None and hasattr(transforms, "set_random_seed"):
        transforms.set_random_seed(seed)
