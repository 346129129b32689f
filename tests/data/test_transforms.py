"""Tests of the augmentation, the collate function, and the reproducibility of the loader."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Subset

from detector.data import (
    CocoDetection,
    build_detection_loader,
    build_train_augmentation,
    collate_detection,
    generate_synthetic_coco,
)
from detector.errors import ConfigError


@pytest.fixture(scope="module")
def synthetic_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_synthetic_coco(tmp_path_factory.mktemp("syn"), split="train", num_images=8, seed=0)


def _dataset(split: tuple[Path, Path], *, augment: bool = True) -> CocoDetection:
    transforms = build_train_augmentation(hflip_prob=0.5, color_jitter=0.3) if augment else None
    return CocoDetection(images=split[0], annotations=split[1], transforms=transforms)


def _epoch(loader) -> list[tuple[list[torch.Tensor], list[dict]]]:
    return list(loader)


def _same(a, b) -> bool:
    """Whether two lists of batches are identical: image ids, pixels, boxes and labels."""
    if len(a) != len(b):
        return False
    for (images_a, targets_a), (images_b, targets_b) in zip(a, b):
        if [t["image_id"] for t in targets_a] != [t["image_id"] for t in targets_b]:
            return False
        if not all(torch.equal(x, y) for x, y in zip(images_a, images_b)):
            return False
        if not all(torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
                   for x, y in zip(targets_a, targets_b)):  # fmt: skip
            return False
    return True


def _order(batches) -> list[int]:
    return [t["image_id"] for _, targets in batches for t in targets]


# --- augmentation ---------------------------------------------------------------------------------


def test_augmentation_settings():
    aug = build_train_augmentation(hflip_prob=0.5, color_jitter=0.2)
    assert isinstance(aug, A.Compose)
    assert [type(t) for t in aug.transforms] == [A.HorizontalFlip, A.ColorJitter]
    bbox_params = aug.processors["bboxes"].params
    assert bbox_params.format == "pascal_voc" and list(bbox_params.label_fields) == ["labels"]
    assert not any(isinstance(t, (A.Resize, A.LongestMaxSize, A.SmallestMaxSize)) for t in aug.transforms)
    assert [type(t) for t in build_train_augmentation(color_jitter=0.0).transforms] == [A.HorizontalFlip]
    assert bbox_params.min_visibility == 0.3 and bbox_params.clip


def test_identity_when_everything_is_off():
    aug = build_train_augmentation(hflip_prob=0.0, color_jitter=0.0)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = aug(image=image, bboxes=np.array([[1.0, 2.0, 10.0, 12.0]]), labels=np.array([4]))
    assert np.array_equal(out["image"], image)
    assert np.allclose(out["bboxes"], [[1, 2, 10, 12]]) and list(out["labels"]) == [4]


def test_color_jitter_changes_pixels_but_not_boxes_or_hue_order():
    aug = build_train_augmentation(hflip_prob=0.0, color_jitter=0.4, seed=0)
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[..., 0] = 180  # a red image stays red: hue is never jittered
    image[..., 1] = 40
    boxes = np.array([[2.0, 3.0, 9.0, 11.0]])
    changed = 0
    for _ in range(10):
        out = aug(image=image, bboxes=boxes, labels=np.array([1]))
        changed += not np.array_equal(out["image"], image)
        assert np.allclose(out["bboxes"], boxes)
        assert (out["image"][..., 0] >= out["image"][..., 1]).all() and (out["image"][..., 0] >= out["image"][..., 2]).all()
    assert changed >= 5  # applied with p = 0.8


def test_empty_boxes_pass_through():
    out = build_train_augmentation(hflip_prob=1.0)(
        image=np.zeros((8, 8, 3), np.uint8), bboxes=np.zeros((0, 4)), labels=np.zeros((0,), np.int64)
    )
    assert np.asarray(out["bboxes"]).reshape(-1, 4).shape == (0, 4)


@pytest.mark.parametrize("kwargs", [{"hflip_prob": 1.5}, {"hflip_prob": -0.1}, {"color_jitter": -1.0}])
def test_bad_augmentation_parameters(kwargs):
    with pytest.raises(ConfigError):
        build_train_augmentation(**kwargs)


# --- collate and loader ---------------------------------------------------------------------------


def test_collate_keeps_images_of_different_sizes_as_a_list():
    a = (torch.zeros(3, 4, 5), {"image_id": 1})
    b = (torch.ones(3, 6, 2), {"image_id": 2})
    images, targets = collate_detection([a, b])
    assert isinstance(images, list) and [im.shape for im in images] == [(3, 4, 5), (3, 6, 2)]
    assert targets == [{"image_id": 1}, {"image_id": 2}]


def test_loader_batches(synthetic_split):
    loader = build_detection_loader(_dataset(synthetic_split), batch_size=3, shuffle=False)
    batches = _epoch(loader)
    assert [len(images) for images, _ in batches] == [3, 3, 2]
    assert _order(batches) == list(range(1, 9))
    assert len({tuple(im.shape) for images, _ in batches for im in images}) > 1  # sizes differ
    assert [len(images) for images, _ in _epoch(
        build_detection_loader(_dataset(synthetic_split), batch_size=3, shuffle=False, drop_last=True)
    )] == [3, 3]  # fmt: skip


def test_same_seed_same_batches_in_process(synthetic_split):
    # Two loaders over the *same* dataset object: the second must not continue the first's random
    # stream, so the augmentation is reseeded per loader epoch.
    dataset = _dataset(synthetic_split)
    first = build_detection_loader(dataset, batch_size=2, shuffle=True, seed=7)
    second = build_detection_loader(dataset, batch_size=2, shuffle=True, seed=7)
    epochs_first = [_epoch(first), _epoch(first)]
    epochs_second = [_epoch(second), _epoch(second)]
    assert _same(epochs_first[0], epochs_second[0]) and _same(epochs_first[1], epochs_second[1])
    # Consecutive epochs differ (order and augmentation), or training would repeat one epoch.
    assert _order(epochs_first[0]) != _order(epochs_first[1])


def test_augmentation_differs_between_epochs(synthetic_split):
    loader = build_detection_loader(_dataset(synthetic_split), batch_size=4, shuffle=False, seed=0)
    plain = _epoch(build_detection_loader(_dataset(synthetic_split, augment=False), batch_size=4, shuffle=False))
    flips = []
    for _ in range(2):
        batches = _epoch(loader)
        # Which images were flipped: compare with the unaugmented boxes.
        flips.append([
            not torch.equal(t["boxes"], p["boxes"])
            for (_, ts), (_, ps) in zip(batches, plain) for t, p in zip(ts, ps)
        ])  # fmt: skip
    assert any(flips[0]) and not all(flips[0])  # p = 0.5 flips some, not all
    assert flips[0] != flips[1]


def test_different_seed_different_order(synthetic_split):
    dataset = _dataset(synthetic_split)
    a = _order(_epoch(build_detection_loader(dataset, batch_size=2, shuffle=True, seed=0)))
    b = _order(_epoch(build_detection_loader(dataset, batch_size=2, shuffle=True, seed=1)))
    assert sorted(a) == sorted(b) == list(range(1, 9)) and a != b


def test_same_seed_same_batches_with_workers(synthetic_split):
    # Separate datasets, whose augmentations start from different OS-entropy seeds: only the
    # per-worker reseeding can make them agree.
    runs = [
        _epoch(build_detection_loader(_dataset(synthetic_split), batch_size=2, shuffle=True, num_workers=2, seed=3))
        for _ in range(2)
    ]
    assert _same(runs[0], runs[1])
    other = _epoch(
        build_detection_loader(_dataset(synthetic_split), batch_size=2, shuffle=True, num_workers=2, seed=4)
    )
    assert not _same(runs[0], other)


def test_subset_and_concat_datasets_are_reseeded(synthetic_split):
    dataset = _dataset(synthetic_split)
    subset = Subset(dataset, [0, 2, 4, 6])
    concat = ConcatDataset([subset, _dataset(synthetic_split)])
    for wrapped in (subset, concat):
        a = _epoch(build_detection_loader(wrapped, batch_size=2, shuffle=True, seed=5))
        b = _epoch(build_detection_loader(wrapped, batch_size=2, shuffle=True, seed=5))
        assert _same(a, b)
