"""COCO instances JSON as a detection dataset (the contract: :mod:`detector.data.dataset`).

The annotation file is read once with :mod:`json` (so that a syntax error can be reported with its
line and column); everything else (category ids -> labels 1..K in sorted order, crowd and ``ignore``
handling, the box rule shared by training and evaluation) is :class:`DetectionDataset`'s.

Shape shorthand:
    H, W: height and width of one image in pixels.
    N: number of boxes kept for one image (may be 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detector.data.dataset import DetectionDataset
from detector.errors import DatasetError

__all__ = ["CocoDetection", "load_coco_json"]


class CocoDetection(DetectionDataset):
    """Images and boxes from a COCO instances JSON file.

    COCO category ids (any integers, possibly with gaps, e.g. 1..90 for COCO 2017) are mapped in
    sorted order to contiguous labels ``1..K``.
    """

    def __init__(
        self,
        *,
        images: str | Path | None,
        annotations: str | Path,
        **common: Any,
    ) -> None:
        """
        Args:
            images: Directory the images' ``file_name`` entries are relative to. With
                ``check_files=False`` (scoring a results file, which reads no image) it may be left
                out or name a folder that does not exist.
            annotations: COCO instances JSON file.
            **common: :class:`DetectionDataset`'s ``transforms``, ``skip_empty``, ``check_files``,
                ``proposals``, ``proposal_topk``.

        Raises:
            DatasetError: The directory or file is missing, the JSON is invalid, it is not a
                COCO instances file, or image files are missing.
        """
        self.annotations_file = Path(annotations)
        if images is None or not Path(images).is_dir():
            if common.get("check_files", True):
                raise DatasetError(f"{images}: images directory not found")
            images = self.annotations_file.parent  # never read: no image is opened to score results
        if not self.annotations_file.is_file():
            raise DatasetError(f"{self.annotations_file}: annotation file not found")
        super().__init__(
            coco_dict=load_coco_json(self.annotations_file), images_dir=images, source=self.annotations_file,
            **common,
        )


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances file; raise :class:`DatasetError` (one line) on anything that is not one."""
    return _load_json(Path(path))


def _load_json(path: Path) -> dict[str, Any]:
    """Read a COCO instances file; raise :class:`DatasetError` on anything that is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            dataset = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DatasetError(f"{path}: cannot read annotation file ({err.strerror or err})") from err
    if not isinstance(dataset, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    missing = [key for key in ("images", "annotations", "categories") if key not in dataset]
    if missing:
        raise DatasetError(f"{path}: not a COCO instances file, missing key(s) {', '.join(map(repr, missing))}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list, got {type(dataset[key]).__name__}")
    return dataset  # entries are checked by DetectionDataset
