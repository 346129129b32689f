"""Data: the embedded synthetic dataset, the COCO loader, augmentation and batching.

Every dataset, the embedded synthetic one included, is COCO instances JSON plus image files on disk
and goes through :class:`CocoDetection`; a batch is a list of images of different sizes and a list of
target dicts (torchvision's detection contract), built by :func:`build_detection_loader`.
"""

from detector.data.collate import build_detection_loader, collate_detection
from detector.data.coco import CocoDetection
from detector.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_VERSION,
    ensure_synthetic_split,
    generate_synthetic_coco,
)
from detector.data.transforms import build_train_augmentation

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_VERSION",
    "CocoDetection",
    "build_detection_loader",
    "build_train_augmentation",
    "collate_detection",
    "ensure_synthetic_split",
    "generate_synthetic_coco",
]
