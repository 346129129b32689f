"""YOLO (Ultralytics layout) datasets as a detection dataset (the contract: :mod:`detector.data.dataset`).

A ``data.yaml`` describes the dataset::

    path: .                  # root; relative paths are relative to this file's folder
    train: images/train      # a folder of images, a .txt list of image paths, or a list of either
    val: images/val
    names: {0: person, 1: bicycle}   # or a list

Each image's labels are in the file found by replacing the last ``/images/`` of its path with
``/labels/`` and its suffix with ``.txt`` (Ultralytics' ``img2label_paths``). A missing or empty
label file is an image without objects. A line is ``class cx cy w h``, normalised to [0, 1]; a line
with more than 5 columns is a polygon ``class x1 y1 x2 y2 ...`` and becomes its bounding box
(decided per line, not per file, as Ultralytics does). Category ids are the YOLO class indices, so
the COCO results of an Ultralytics model (``category_id`` = class index) score unchanged.

Errors name the file and line: a class id outside ``names``, a wrong number of columns, a value
outside [0, 1] beyond :data:`TOLERANCE`, a ``data.yaml`` without ``train``, ``val`` or ``names``.

Written here because reading this layout otherwise means installing Ultralytics (AGPL, and a whole
training framework); YAML is read with PyYAML's ``safe_load``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from detector.data.dataset import DetectionDataset
from detector.data.image_io import IMAGE_SUFFIXES, image_size
from detector.errors import DatasetError

__all__ = ["TOLERANCE", "YOLODetection", "load_yolo", "read_data_yaml", "label_path"]

# Normalised coordinates may overshoot [0, 1] by this much (rounding in labelling tools' exports);
# beyond it the line is an error, within it the box is clipped by the dataset's rule.
TOLERANCE = 0.01


class YOLODetection(DetectionDataset):
    """Images and boxes of one split (``train``, ``val``, ``test``) of a YOLO ``data.yaml``."""

    def __init__(
        self,
        *,
        data: str | Path,
        split: str,
        **common: Any,
    ) -> None:
        """
        Args:
            data: The ``data.yaml`` file.
            split: Its key to read (``train``, ``val`` or ``test``).
            **common: :class:`DetectionDataset`'s ``transforms``, ``skip_empty``, ``check_files``,
                ``proposals``, ``proposal_topk``.
        """
        self.data_file = Path(data)
        coco_dict, root = load_yolo(self.data_file, split)
        super().__init__(
            coco_dict=coco_dict, images_dir=root, source=f"{self.data_file} [{split}]", **common,
        )


def read_data_yaml(data: str | Path, *, splits: tuple[str, ...] = ("train", "val")) -> tuple[dict[str, Any], Path, list[str]]:
    """(the parsed file, the dataset root, the class names by index).

    Raises:
        DatasetError: Missing file, invalid YAML, no ``names`` or no entry for one of ``splits``, or names that are
            neither a list nor a dict ``{0: name, ...}`` with indices 0..K-1.
    """
    data = Path(data)
    try:
        spec = yaml.safe_load(data.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{data}: data.yaml not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise DatasetError(f"{data}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(spec, dict):
        raise DatasetError(f"{data}: expected a mapping with 'train', 'val' and 'names'")
    missing = [key for key in (*splits, "names") if not spec.get(key)]
    if missing:
        raise DatasetError(f"{data}: no {', '.join(map(repr, missing))} (a YOLO data.yaml needs train, val and names)")
    names = spec["names"]
    if isinstance(names, dict):
        try:
            indexed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{data}: 'names' keys must be class indices 0, 1, ...") from None
        if sorted(indexed) != list(range(len(indexed))):
            raise DatasetError(f"{data}: 'names' indices must be 0..{len(indexed) - 1}, got {sorted(indexed)}")
        names = [indexed[i] for i in range(len(indexed))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DatasetError(f"{data}: 'names' must be a list or a dict {{0: name, ...}}, got {type(names).__name__}")
    root = Path(str(spec.get("path") or "."))
    if not root.is_absolute():
        root = data.parent / root
    return spec, root.resolve(), names


def label_path(image: Path) -> Path:
    """``.../images/x/a.jpg`` -> ``.../labels/x/a.txt`` (the last ``/images/`` is replaced)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_images(data: Path, root: Path, value: Any) -> list[Path]:
    """Image paths of a split: folders (recursively), ``.txt`` lists, or a list of either."""
    items = value if isinstance(value, list) else [value]
    images: list[Path] = []
    for item in items:
        path = Path(str(item))
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix == ".txt":
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line:
                    p = Path(line)
                    # Ultralytics: "./x.jpg" is relative to the list's folder, "x.jpg" to the root.
                    images.append(p if p.is_absolute() else (path.parent / p if line.startswith("./") else root / p))
        elif path.exists():
            raise DatasetError(
                f"{data}: split entry {item!r} is the file {path}, which is neither a folder of images nor a .txt "
                f"list of image paths; name the folder that holds the split's images"
            )
        else:
            raise DatasetError(f"{data}: split entry {item!r} is neither a folder nor a .txt list ({path} not found)")
    return images


def _parse_line(label_file: Path, number: int, line: str, num_classes: int) -> tuple[int, list[float]]:
    """One label line -> (class index, normalised [x1, y1, x2, y2])."""
    where = f"{label_file}:{number}"
    fields = line.split()
    try:
        cls = int(float(fields[0]))
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise DatasetError(f"{where}: not numbers: {line.strip()!r}") from None
    if len(values) < 4 or (len(values) > 4 and len(values) % 2):
        raise DatasetError(
            f"{where}: {len(fields)} columns; expected 'class cx cy w h' (5) or a polygon 'class x1 y1 x2 y2 ...' "
            f"(an odd number >= 7)"
        )
    if not 0 <= cls < num_classes or float(fields[0]) != cls:
        raise DatasetError(f"{where}: class {fields[0]} is not in names (0..{num_classes - 1})")
    if not all(math.isfinite(v) for v in values):
        raise DatasetError(f"{where}: non-finite value in {line.strip()!r}")
    if len(values) == 4:
        cx, cy, w, h = values
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        checked = [cx, cy, w, h]
    else:  # a polygon: its bounding box
        xs, ys = values[0::2], values[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
        checked = values
    if any(v < -TOLERANCE or v > 1 + TOLERANCE for v in checked):
        raise DatasetError(f"{where}: values must be normalised to [0, 1] (got {line.strip()!r}); are they pixels?")
    return cls, box


def load_yolo(data: str | Path, split: str) -> tuple[dict[str, Any], Path]:
    """Read one split of a YOLO dataset into a COCO instances dict and the root its paths are under.

    Images get ids ``1..N`` in sorted path order; ``file_name`` is relative to the root when the image
    lies under it, absolute otherwise. Image sizes come from the image headers (EXIF-aware).
    """
    data = Path(data)
    spec, root, names = read_data_yaml(data, splits=(split,))
    images, annotations = [], []
    for image_id, path in enumerate(sorted(set(_split_images(data, root, spec[split]))), start=1):
        width, height = image_size(path)
        try:
            file_name = str(path.resolve().relative_to(root))
        except ValueError:
            file_name = str(path.resolve())
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        label_file = label_path(path)
        if not label_file.is_file():
            continue  # no label file: an image without objects
        for number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            cls, (x1, y1, x2, y2) = _parse_line(label_file, number, line, len(names))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cls,
                "bbox": [x1 * width, y1 * height, (x2 - x1) * width, (y2 - y1) * height], "iscrowd": 0,
                "source": f"{label_file}:{number}",
            })
    categories = [{"id": i, "name": name} for i, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}, root
