"""Data: the dataset contract, the COCO/VOC/YOLO readers, the generated datasets, augmentation, batching.

Every format implements one contract, :class:`DetectionDataset` (see :mod:`detector.data.dataset`):
``dataset[i] -> (image float32 [3, H, W] RGB 0..1, target dict(boxes float32 [N, 4] xyxy pixels,
labels int64 [N] 1..K, image_id, orig_size))`` plus ``class_names``, ``num_classes`` and the ground
truth the evaluation scores against (``coco``, ``label_to_cat_id``). A batch is a list of images of
different sizes and a list of target dicts (torchvision's detection contract), built by
:func:`build_detection_loader`.
"""

from detector.data.collate import build_detection_loader, build_training_loader, collate_detection
from detector.data.coco import CocoDetection
from detector.data.dataset import DetectionDataset
from detector.data.synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_VERSION,
    ensure_synthetic_split,
    generate_synthetic_coco,
)
from detector.data.transforms import build_train_augmentation, detection_compose
from detector.data.voc import VOC_CLASSES, VOCDetection
from detector.data.yolo import YOLODetection

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_VERSION",
    "VOC_CLASSES",
    "VOCDetection",
    "YOLODetection",
    "CocoDetection",
    "DetectionDataset",
    "build_detection_loader",
    "build_training_loader",
    "build_train_augmentation",
    "collate_detection",
    "detection_compose",
    "ensure_synthetic_split",
    "generate_synthetic_coco",
]
