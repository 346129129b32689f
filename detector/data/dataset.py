"""The one dataset contract every format implements, and the machinery they share.

A format reader (COCO JSON, Pascal VOC XML, YOLO text files) only turns its files into a COCO
instances dict; :class:`DetectionDataset` does everything else the same way for all of them, so every
format is trained on, and scored by the same COCO evaluator and VOC metrics, under one rule:

``dataset[i] -> (image, target)``
    * ``image``: float32 ``[3, H, W]`` RGB in ``[0, 1]`` (EXIF orientation applied).
    * ``target``: ``{"boxes": float32 [N, 4] xyxy in pixels, "labels": int64 [N] in 1..K,
      "image_id": int, "orig_size": (H, W)}``; label 0 is the detector's background.

Attributes every dataset has: ``class_names`` (``class_names[label - 1]``), ``num_classes`` (K),
``coco`` (a :class:`pycocotools.coco.COCO` of the ground truth evaluation scores against),
``cat_id_to_label`` / ``label_to_cat_id`` (category ids in sorted order <-> labels 1..K), ``ids``
(image ids in dataset order) and ``source`` (the file or folder, for messages).

One rule for boxes, applied before training *and* evaluation (the same boxes are targets and ground
truth, so a box the detector is never taught is never counted as missed):

* A box is clipped to its image; one that is non-finite, or under 1 px wide or high after clipping
  (zero or negative size, or outside the image), is dropped from both. One warning per dataset
  counts the boxes clipped and dropped by reason and names the first example.
* Crowd regions (``iscrowd=1``) and ``ignore`` / ``difficult`` objects are not training targets
  (unless ``use_difficult``); they stay in :attr:`coco`, where the evaluation neither counts them
  as misses nor a detection on them as a false positive.

Shape shorthand:
    H, W: height and width of one image in pixels.
    N: number of boxes kept for one image (may be 0).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from pycocotools.coco import COCO

from detector.data.image_io import read_rgb
from detector.data.proposals import load_proposals
from detector.errors import DatasetError

__all__ = ["DetectionDataset", "is_ignored"]


def is_ignored(ann: dict[str, Any], *, difficult: bool = True) -> bool:
    """Crowd regions, ``ignore`` objects and (unless ``difficult=False``) ``difficult`` ones: not training
    targets, and in evaluation neither a miss nor a false positive (see the module docstring)."""
    return bool(ann.get("iscrowd") or ann.get("ignore") or (difficult and ann.get("difficult")))

# Transforms: albumentations-style callable, e.g. an ``A.Compose`` with
# ``BboxParams(format="pascal_voc", label_fields=["labels"])`` (see detector.data.transforms).
Transforms = Callable[..., dict[str, Any]]

MIN_BOX_SIDE = 1.0  # px; narrower or lower boxes (after clipping) have no well-defined regression target
_MISSING_SHOWN = 5  # missing image files named in the error


class DetectionDataset(torch.utils.data.Dataset):
    """Images and boxes from a COCO instances dict (see the module docstring for the contract)."""

    def __init__(
        self,
        *,
        coco_dict: dict[str, Any],
        images_dir: str | Path,
        source: str | Path,
        transforms: Transforms | None = None,
        skip_empty: bool = False,
        use_difficult: bool = False,
        check_files: bool = True,
        proposals: str | Path | None = None,
        proposal_topk: int | None = None,
    ) -> None:
        """Clean the boxes, index the ground truth and build the targets; images are read lazily.

        Args:
            coco_dict: ``images`` (``id, file_name, width, height``), ``annotations`` (``id,
                image_id, category_id, bbox [x, y, w, h]``, optional ``iscrowd``, ``ignore``,
                ``difficult``, ``area`` and ``source`` (where it came from, e.g. ``a.txt:3``, for
                messages)) and ``categories`` (``id, name``). Not modified.
            images_dir: Folder the images' ``file_name`` entries are relative to (an absolute
                ``file_name`` is used as it is).
            source: The annotation file or folder, named in every message.
            transforms: Optional augmentation called as
                ``transforms(image=uint8 [H, W, 3], bboxes=float [N, 4] xyxy, labels=int [N])``
                and returning a dict with the same keys; boxes may be dropped by it.
            skip_empty: Leave out images without any training box (an image with no objects adds
                only background RoIs, which the sampler has plenty of already).
            use_difficult: Train on ``difficult`` objects too (VOC's ``use_difficult``); they stay
                "difficult" for the evaluation either way.
            check_files: Stat every image file now, so that missing ones are all reported at once,
                before training starts, rather than one by one when first read.
            proposals: A proposal file (:mod:`detector.data.proposals`) for Fast R-CNN: each
                target then holds ``"proposals"`` float32 ``[P, 4]`` xyxy, moved by the same
                augmentation as the image's boxes.
            proposal_topk: Proposals kept per image (the highest scoring).

        Raises:
            DatasetError: Malformed entries, duplicate ids, or missing image files.
        """
        self.images_dir = Path(images_dir)
        self.source = str(source)
        self.transforms = transforms
        dataset = copy.deepcopy(coco_dict)
        _check_structure(self.source, dataset)
        self.coco = COCO()
        self.coco.dataset = self._clean(dataset)
        # pycocotools prints "creating index..." to stdout; keep the caller's output clean.
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()

        cat_ids = sorted(self.coco.cats)
        self.cat_id_to_label: dict[int, int] = {cat_id: i + 1 for i, cat_id in enumerate(cat_ids)}
        self.label_to_cat_id: dict[int, int] = {i + 1: cat_id for i, cat_id in enumerate(cat_ids)}
        self.class_names: tuple[str, ...] = tuple(str(self.coco.cats[c]["name"]) for c in cat_ids)
        self.num_classes: int = len(cat_ids)

        self._targets = self._build_targets(use_difficult=use_difficult)
        ids = [image["id"] for image in self.coco.dataset["images"]]
        if skip_empty:
            ids = [image_id for image_id in ids if len(self._targets[image_id][1]) > 0]
        self.ids: list[int] = ids
        if check_files:
            self._check_files()
        self._cache: dict[int, np.ndarray] = {}  # decoded images (cache_images)
        self._cache_budget = self._cache_used = self._cache_pid = 0
        self.proposals_file = str(proposals) if proposals else None
        self._proposals = (
            load_proposals(proposals, self.coco.imgs, topk=proposal_topk, ids=self.ids) if proposals else None
        )

    def __len__(self) -> int:
        return len(self.ids)

    def cache_images(self, max_bytes: int) -> None:
        """Keep decoded images in this process's memory, up to ``max_bytes`` in all (0: none).

        Reading and decoding a JPEG is most of what loading a training image costs (the
        augmentation is the rest), and the run reads each image once an epoch. Images are kept in
        the order first read until the budget is spent; the rest are read from disk each time. An
        image served from memory is the same read-only array as from disk (no transform can write
        into it), so training is unchanged. Only the process that called this adds to the cache: a
        data-loader worker reads what its parent held when it was forked (a spawned one starts with
        none: pickling leaves it out), so workers never multiply the budget.
        """
        if max_bytes < 0:
            raise ValueError(f"cache_images: max_bytes must be >= 0, got {max_bytes!r}")
        self._cache_budget = int(max_bytes)
        self._cache_pid = os.getpid()

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded images held by :meth:`cache_images` in this process."""
        return self._cache_used

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"], state["_cache_used"] = {}, 0  # a worker process fills its own (see cache_images)
        return state

    def _read(self, image_id: int, path: Path) -> np.ndarray:
        """uint8 [H, W, 3] of image ``image_id``: from the cache, or read and (budget allowing) kept."""
        if image_id in self._cache:
            return self._cache[image_id]
        pixels = read_rgb(path)
        if self._cache_used + pixels.nbytes <= self._cache_budget and os.getpid() == self._cache_pid:
            pixels.flags.writeable = False  # as read_rgb's arrays are: no transform can write into the cache
            self._cache[image_id] = pixels
            self._cache_used += pixels.nbytes
        return pixels

    @property
    def proposals(self) -> dict[int, torch.Tensor] | None:
        """image id -> proposals [P, 4] as loaded (before augmentation), or None without a file."""
        return self._proposals

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, by index, from the annotations (no image is read)."""
        return [self.coco.imgs[i]["width"] / self.coco.imgs[i]["height"] for i in self.ids]

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.coco.imgs[image_id]["file_name"]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Load image ``idx`` and its target (see the module docstring).

        Raises:
            DatasetError: The image file is missing, cannot be decoded, or its size differs from
                the ``width``/``height`` the annotations give it.
        """
        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        pixels = self._read(image_id, path)  # uint8 [H, W, 3]
        height, width = pixels.shape[:2]
        if (width, height) != (info["width"], info["height"]):
            # Boxes are in the annotated frame; a resized or rotated file would silently misplace them.
            raise DatasetError(
                f"{path}: image is {width}x{height} but {self.source} says {info['width']}x{info['height']}"
            )
        boxes, labels = self._targets[image_id]  # float32 [N, 4], int64 [N]
        proposals = self._proposals[image_id].numpy() if self._proposals is not None else None  # [P, 4]

        if self.transforms is not None:
            if proposals is not None:
                # The proposals ride along as a second set of boxes, marked by negative labels, so
                # the augmentation moves them exactly as it moves the objects (a flip mirrors both).
                boxes = np.concatenate([boxes, proposals])
                labels = np.concatenate([labels, -1 - np.arange(len(proposals))])
            out = self.transforms(image=pixels, bboxes=boxes, labels=labels)
            pixels = out["image"]
            boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
            labels = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
            if proposals is not None:
                is_proposal = labels < 0
                proposals, boxes, labels = boxes[is_proposal], boxes[~is_proposal], labels[~is_proposal]

        # HWC uint8 -> CHW float in [0, 1]; a flip may have left a negative-stride view.
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))).float().div_(255.0)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
            "image_id": int(image_id),
            "orig_size": (int(height), int(width)),
        }
        if proposals is not None:
            target["proposals"] = torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4)
        return image, target

    # -- construction -------------------------------------------------------------------------------

    def _clean(self, dataset: dict[str, Any]) -> dict[str, Any]:
        """Clip every box to its image and drop the unusable ones (the module's rule), warning once."""
        sizes = {image["id"]: (float(image["width"]), float(image["height"])) for image in dataset["images"]}
        cat_ids = {cat["id"] for cat in dataset["categories"]}
        kept, dropped, clipped = [], Counter(), 0
        first: dict[str, str] = {}
        for ann in dataset["annotations"]:
            where = ann.get("source") or f"annotation id {ann.get('id')!r}"
            if ann["category_id"] not in cat_ids:
                reason = f"category_id not in 'categories' (e.g. {ann['category_id']!r})"
            elif ann["image_id"] not in sizes:
                reason = f"image_id not in 'images' (e.g. {ann['image_id']!r})"
            else:
                reason, box = _clip(ann.get("bbox"), *sizes[ann["image_id"]], where=where, file=self.source)
                if reason is None:
                    x, y, w, h = (float(v) for v in ann["bbox"])
                    x1, y1, x2, y2 = box
                    if (x1, y1, x2, y2) != (x, y, x + w, y + h):  # clipping changed it
                        clipped += 1
                        first.setdefault("clipped", where)
                        ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                        ann["area"] = (x2 - x1) * (y2 - y1)
                    else:
                        ann["bbox"] = [x, y, w, h]
                    ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
                    ann.setdefault("iscrowd", 0)
                    kept.append(ann)
                    continue
            dropped[reason] += 1
            first.setdefault(reason, where)
        for i, ann in enumerate(kept):
            ann.setdefault("id", i + 1)
        if dropped or clipped:
            parts = [f"{n} {r}" for r, n in sorted(dropped.items(), key=lambda kv: -kv[1])]
            example = next(iter(first.values()))
            # One warning per dataset, not one per box: a file can hold thousands of them.
            warnings.warn(
                f"{self.source}: {clipped} box(es) clipped to the image"
                + (f", {sum(dropped.values())} dropped ({'; '.join(parts)})" if dropped else "")
                + f" -- for training and evaluation alike; first: {example}",
                stacklevel=4,
            )
        dataset["annotations"] = kept
        return dataset

    def _build_targets(self, *, use_difficult: bool) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per image id: ``(boxes float32 [N, 4] xyxy, labels int64 [N])`` of the training objects."""
        per_image: dict[int, tuple[list[list[float]], list[int]]] = {i: ([], []) for i in self.coco.imgs}
        for ann in self.coco.dataset["annotations"]:
            if is_ignored(ann, difficult=not use_difficult):
                continue
            x, y, w, h = ann["bbox"]
            per_image[ann["image_id"]][0].append([x, y, x + w, y + h])
            per_image[ann["image_id"]][1].append(self.cat_id_to_label[ann["category_id"]])
        return {
            image_id: (
                np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                np.asarray(labels, dtype=np.int64).reshape(-1),
            )
            for image_id, (boxes, labels) in per_image.items()
        }

    def _check_files(self) -> None:
        missing = [self.coco.imgs[i]["file_name"] for i in self.ids if not self.image_path(i).is_file()]
        if missing:
            shown = ", ".join(map(str, missing[:_MISSING_SHOWN])) + (", ..." if len(missing) > _MISSING_SHOWN else "")
            raise DatasetError(
                f"{self.source}: {len(missing)} of {len(self.ids)} image files not found under "
                f"{self.images_dir} ({shown}); fix the image folder or remove those entries"
            )


def _check_structure(file: str, dataset: dict[str, Any]) -> None:
    """Entries that are not COCO at all are errors (one line), not something to skip."""
    seen_images: set[Any] = set()
    for image in dataset["images"]:
        if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
            raise DatasetError(f"{file}: an image entry lacks 'id', 'file_name', 'width' or 'height': {image!r:.120}")
        if image["id"] in seen_images:
            raise DatasetError(f"{file}: image id {image['id']} is listed twice")
        seen_images.add(image["id"])
    seen_cats: set[Any] = set()
    for cat in dataset["categories"]:
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DatasetError(f"{file}: a category lacks 'id' or 'name': {cat!r:.120}")
        if cat["id"] in seen_cats:
            raise DatasetError(f"{file}: category id {cat['id']} is listed twice")
        seen_cats.add(cat["id"])
    for ann in dataset["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise DatasetError(f"{file}: an annotation lacks 'image_id' or 'category_id': {ann!r:.120}")


def _clip(bbox: Any, width: float, height: float, *, where: str, file: str) -> tuple[str | None, list[float]]:
    """COCO ``[x, y, w, h]`` -> (None, clipped xyxy), or (the reason it is dropped, [])."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DatasetError(f"{file}: {where} has bbox {bbox!r}, expected [x, y, width, height]") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "non-finite", []
    if w <= 0 or h <= 0:
        return "zero or negative size", []
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
        inside = x + w > 0 and y + h > 0 and x < width and y < height
        return ("under 1 px wide or high" if inside else "outside the image"), []
    return None, [x1, y1, x2, y2]
