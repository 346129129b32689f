"""Training-time augmentation: albumentations transforms with bounding-box bookkeeping.

The transforms themselves are listed in ``configs/augmentation/*.yaml`` as ``_target_`` nodes
(``augmentation=flip``: the paper's; ``augmentation=strong``: crop, colour jitter, flip;
``augmentation=none``) and wrapped here by :func:`detection_compose` with the box rules. Resizing is
not an augmentation: the model resizes the shorter side and pads the batch itself (like
torchvision's ``GeneralizedRCNNTransform``), so that training and inference see the same geometry
and predictions can be mapped back to ``orig_size``. Validation uses no transform at all.

The returned :class:`albumentations.Compose` is what :class:`detector.data.coco.CocoDetection` calls
as ``transforms(image=uint8 [H, W, 3], bboxes=float [N, 4] xyxy, labels=int [N])``. It keeps its own
random state (albumentations >= 2 does not use the global ``numpy``/``random`` state);
:func:`detector.data.collate.build_detection_loader` reseeds it per epoch and per worker.

Shape shorthand:
    H, W: height and width of one image in pixels.
    N: number of boxes of that image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# albumentations asks PyPI for a newer version on import (up to 2 s, and a warning when offline), in
# every process that imports it, DataLoader workers included. A training run should not phone home;
# setdefault keeps an explicit choice of the user.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402

from detector.errors import ConfigError  # noqa: E402

__all__ = ["build_train_augmentation", "detection_compose"]

# A box must keep 30% of its area to stay a target. Flips never cut a box; this matters once a crop
# is added: a sliver of an object teaches the box regressor a wrong extent.
_MIN_VISIBILITY = 0.3
# Same rule as the loader: a box under 1 px wide or high has no meaningful regression target.
_MIN_BOX_SIDE = 1.0
# Probability of applying the colour jitter when enabled: as in SSD/YOLO pipelines, some images are
# left untouched so the network also sees the true colour statistics.
_COLOR_JITTER_PROB = 0.8


def detection_compose(
    *,
    transforms: Sequence[A.BasicTransform],
    min_visibility: float = _MIN_VISIBILITY,
    seed: int | None = None,
) -> A.Compose:
    """Wrap albumentations transforms (built from ``configs/augmentation/*.yaml``) with the box rules.

    Boxes are ``pascal_voc`` (xyxy pixels), clipped to the image; a box that keeps less than
    ``min_visibility`` of its area after a crop, or ends under 1 px wide or high, is dropped with its
    label (the loader's rule). Geometric transforms that resize the image are pointless here: the
    model resizes the shorter side itself, which undoes a plain scale jitter; a crop is what changes
    the scale of objects.

    Args:
        transforms: Built albumentations transforms, applied in order. An empty list is allowed
            (``augmentation=none``).
        min_visibility: Fraction of a box's area that must survive a crop for it to stay a target.
        seed: Seed of the augmentation's own random state; None draws one from the OS.
            :func:`~detector.data.collate.build_detection_loader` reseeds it anyway.

    Returns:
        An ``albumentations.Compose`` over ``image``, ``bboxes`` and ``labels``.

    Raises:
        ConfigError: ``min_visibility`` is out of range, or an entry is not an albumentations
            transform.
    """
    if not 0.0 <= min_visibility <= 1.0:
        raise ConfigError(f"min_visibility must be in [0, 1], got {min_visibility}")
    transforms = list(transforms)
    for t in transforms:
        if not isinstance(t, A.BasicTransform):
            raise ConfigError(f"transforms must be albumentations transforms, got {type(t).__name__}")
    if not any(isinstance(t, A.DualTransform) for t in transforms):
        # albumentations warns when a Compose has bbox_params but no transform that moves boxes; a
        # no-op flip costs one random draw.
        transforms.append(A.HorizontalFlip(p=0.0))
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        min_width=_MIN_BOX_SIDE,
        min_height=_MIN_BOX_SIDE,
        # albumentations normalises boxes by the image size and back; a box touching the right edge
        # can come back a hair past it and then fail its range check. Clipping absorbs that.
        clip=True,
    )
    return A.Compose(transforms, bbox_params=bbox_params, seed=seed)


def build_train_augmentation(
    *,
    hflip_prob: float = 0.5,
    color_jitter: float = 0.0,
    seed: int | None = None,
) -> A.Compose:
    """The paper's augmentation (a horizontal flip), optionally with a colour jitter, in code.

    ``configs/augmentation/*.yaml`` is the way to choose an augmentation in a run; this builder is
    for code and tests that want the default without a config.

    Args:
        hflip_prob: Probability of a horizontal flip (the augmentation of the Faster R-CNN paper).
        color_jitter: Strength of the brightness, contrast and saturation jitter: each factor is drawn
            from ``[1 - color_jitter, 1 + color_jitter]``. ``0`` disables it. Hue is never jittered:
            hue is part of what identifies a class in the synthetic dataset (and in real ones: a red
            and a green traffic light).
        seed: As for :func:`detection_compose`.

    Raises:
        ConfigError: A probability or strength is out of range.
    """
    if not 0.0 <= hflip_prob <= 1.0:
        raise ConfigError(f"augmentation: hflip_prob must be in [0, 1], got {hflip_prob}")
    if color_jitter < 0.0:
        raise ConfigError(f"augmentation: color_jitter must be >= 0, got {color_jitter}")
    transforms: list[A.BasicTransform] = [A.HorizontalFlip(p=hflip_prob)]
    if color_jitter > 0.0:
        transforms.append(
            A.ColorJitter(
                brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0,
                p=_COLOR_JITTER_PROB,
            )
        )
    return detection_compose(transforms=transforms, seed=seed)
