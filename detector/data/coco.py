"""COCO instances JSON as a detection dataset, in torchvision's detection data contract.

The annotation file is read once with :mod:`json` (so that a syntax error can be reported with its
line and column) and handed to a :class:`pycocotools.coco.COCO` object, which indexes it and is kept
as :attr:`CocoDetection.coco` for the COCO evaluation later. Training targets are then built from it:

* COCO category ids (any integers, possibly with gaps, e.g. 1..90 for COCO 2017) are mapped in sorted
  order to contiguous labels ``1..K``; label 0 is the background of the detector.
* Crowd regions (``iscrowd=1``) and annotations with a truthy ``ignore`` flag are left out of the
  targets. They are not object instances to regress to; the COCO evaluation handles crowd regions
  itself from :attr:`coco`.
* Boxes are converted from ``[x, y, w, h]`` to ``[x1, y1, x2, y2]``, clipped to the image, and dropped
  when less than 1 px wide or high after clipping: such a box has no well-defined regression target.
* An annotation whose ``category_id`` no category lists, or whose ``image_id`` no image lists, is
  skipped with one warning per dataset.

Shape shorthand:
    H, W: height and width of one image in pixels.
    N: number of boxes kept for one image (may be 0).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from detector.errors import DatasetError

__all__ = ["CocoDetection"]

# Transforms: albumentations-style callable, e.g. an ``A.Compose`` with
# ``BboxParams(format="pascal_voc", label_fields=["labels"])`` (see detector.data.transforms).
Transforms = Callable[..., dict[str, Any]]

_MIN_BOX_SIDE = 1.0  # px; narrower or lower boxes (after clipping) are dropped from the targets
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes from a COCO instances JSON file.

    ``dataset[i]`` returns ``(image, target)``:

    * ``image``: float32 ``[3, H, W]`` RGB in ``[0, 1]``.
    * ``target``: ``{"boxes": float32 [N, 4] xyxy in pixels, "labels": int64 [N] in 1..K,
      "image_id": int (the COCO image id), "orig_size": (H, W)}``.

    Attributes:
        coco: The :class:`pycocotools.coco.COCO` object of the whole file (crowd regions included),
            for evaluation.
        class_names: ``class_names[label - 1]`` is the name of ``label``.
        num_classes: ``K``, the number of categories (background not counted).
        cat_id_to_label: COCO category id -> contiguous label in ``1..K`` (ids in sorted order).
        label_to_cat_id: The inverse mapping, to write detections back as COCO results.
        ids: COCO image ids, in dataset order (``ids[i]`` is the image of ``dataset[i]``).
    """

    def __init__(
        self,
        *,
        images: str | Path,
        annotations: str | Path,
        transforms: Transforms | None = None,
        skip_empty: bool = False,
    ) -> None:
        """Read and index the annotation file; images are read lazily in ``__getitem__``.

        Args:
            images: Directory the images' ``file_name`` entries are relative to.
            annotations: COCO instances JSON file.
            transforms: Optional augmentation called as
                ``transforms(image=uint8 [H, W, 3], bboxes=float [N, 4] xyxy, labels=int [N])``
                and returning a dict with the same keys; boxes may be dropped by it.
            skip_empty: Leave out images without any usable box (for training: an image with no
                objects adds only background RoIs, which the sampler has plenty of already).

        Raises:
            DatasetError: The directory or file is missing, the JSON is invalid, or it is not a
                COCO instances file.
        """
        self.images_dir = Path(images)
        self.annotations_file = Path(annotations)
        self.transforms = transforms
        if not self.images_dir.is_dir():
            raise DatasetError(f"{self.images_dir}: images directory not found")
        if not self.annotations_file.is_file():
            raise DatasetError(f"{self.annotations_file}: annotation file not found")

        dataset = _load_json(self.annotations_file)
        self.coco = COCO()
        self.coco.dataset = dataset
        # pycocotools prints "creating index..." to stdout; keep the caller's output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        cat_ids = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {cat_id: i + 1 for i, cat_id in enumerate(cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: cat_id for i, cat_id in enumerate(cat_ids)}
        self.class_names: tuple[str, ...] = tuple(str(self.coco.cats[c]["name"]) for c in cat_ids)
        self.num_classes: int = len(cat_ids)

        self._targets = self._build_targets(dataset)
        ids = [image["id"] for image in dataset["images"]]
        if skip_empty:
            ids = [image_id for image_id in ids if len(self._targets[image_id][1]) > 0]
        self.ids: list[int] = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Load image ``idx`` and its target (see the class docstring).

        Raises:
            DatasetError: The image file is missing, cannot be decoded, or its size differs from
                the ``width``/``height`` the annotation file gives it.
        """
        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        pixels = _read_rgb(path)  # uint8 [H, W, 3]
        height, width = pixels.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            # Boxes are in the annotated frame; a resized or rotated file would silently misplace them.
            raise DatasetError(
                f"{path}: image is {width}x{height} but {self.annotations_file.name} says "
                f"{info['width']}x{info['height']}"
            )
        boxes, labels = self._targets[image_id]  # float32 [N, 4], int64 [N]

        if self.transforms is not None:
            out = self.transforms(image=pixels, bboxes=boxes, labels=labels)
            pixels = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)

        # HWC uint8 -> CHW float in [0, 1]; a flip may have left a negative-stride view.
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div_(255.0)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": int(image_id),
            "orig_size": (int(height), int(width)),
        }
        return image, target

    def _build_targets(self, dataset: dict[str, Any]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per image id: ``(boxes float32 [N, 4] xyxy, labels int64 [N])`` of the usable annotations."""
        file = self.annotations_file
        sizes: dict[int, tuple[float, float]] = {}
        for image in dataset["images"]:
            if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
                raise DatasetError(f"{file}: an image entry lacks 'id', 'file_name', 'width' or 'height': {image!r:.120}")
            if image["id"] in sizes:
                raise DatasetError(f"{file}: image id {image['id']} is listed twice")
            sizes[image["id"]] = (float(image["width"]), float(image["height"]))

        per_image: dict[int, tuple[list[list[float]], list[int]]] = {i: ([], []) for i in sizes}
        unknown_categories: set[Any] = set()
        unknown_images: set[Any] = set()
        skipped_category = skipped_image = 0
        for ann in dataset["annotations"]:
            if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
                raise DatasetError(f"{file}: an annotation lacks 'image_id' or 'category_id': {ann!r:.120}")
            if ann.get("iscrowd", 0) or ann.get("ignore", 0):
                continue
            if ann["category_id"] not in self.cat_id_to_label:
                skipped_category += 1
                unknown_categories.add(ann["category_id"])
                continue
            if ann["image_id"] not in sizes:
                skipped_image += 1
                unknown_images.add(ann["image_id"])
                continue
            box = _xyxy(file, ann, *sizes[ann["image_id"]])
            if box is not None:
                per_image[ann["image_id"]][0].append(box)
                per_image[ann["image_id"]][1].append(self.cat_id_to_label[ann["category_id"]])

        # One warning per dataset, not one per annotation: a file can hold thousands of them.
        if skipped_category:
            warnings.warn(
                f"{file}: skipped {skipped_category} annotation(s) whose category_id is not in "
                f"'categories' (ids {sorted(unknown_categories, key=str)[:10]})",
                stacklevel=3,
            )
        if skipped_image:
            warnings.warn(
                f"{file}: skipped {skipped_image} annotation(s) whose image_id is not in 'images' "
                f"(ids {sorted(unknown_images, key=str)[:10]})",
                stacklevel=3,
            )
        return {
            image_id: (
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64).reshape(-1),
            )
            for image_id, (boxes, labels) in per_image.items()
        }


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
    seen: set[Any] = set()
    for cat in dataset["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"{path}: a category lacks 'id' or 'name': {cat!r:.120}")
        if cat["id"] in seen:
            raise DatasetError(f"{path}: category id {cat['id']} is listed twice")
        seen.add(cat["id"])
    return dataset


def _xyxy(file: Path, ann: dict[str, Any], width: float, height: float) -> list[float] | None:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2]`` clipped to the image; None if degenerate."""
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise DatasetError(
            f"{file}: annotation {ann.get('id')!r} has bbox {bbox!r}, expected [x, y, width, height]"
        ) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DatasetError(f"{file}: annotation {ann.get('id')!r} has a non-finite bbox {bbox!r}")
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 < _MIN_BOX_SIDE or y2 - y1 < _MIN_BOX_SIDE:
        return None
    return [x1, y1, x2, y2]


def _read_rgb(path: Path) -> np.ndarray:
    """Read any image PIL can decode as uint8 ``[H, W, 3]`` RGB.

    Raises:
        DatasetError: The file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in _SIXTEEN_BIT_MODES:
                # PIL's "I;16" -> "RGB" conversion clips at 255 instead of scaling: rescale 16 -> 8 bit.
                gray = np.asarray(img, dtype=np.float32) / 257.0
                img = Image.fromarray(np.clip(gray + 0.5, 0, 255).astype(np.uint8))  # "L"
            elif img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # P -> RGB directly warns about byte transparency
            rgb = img.convert("RGB")  # L, LA, P, RGBA (alpha dropped), CMYK, YCbCr, ...
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL raises OSError for truncated/undecodable files (UnidentifiedImageError is one) and
        # SyntaxError from some plugin parsers.
        raise DatasetError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
