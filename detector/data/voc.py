"""Pascal VOC devkits as a detection dataset (the contract: :mod:`detector.data.dataset`).

Layout (one or more years under a ``VOCdevkit`` root, as the official tars unpack)::

    ROOT/VOC2007/Annotations/000001.xml
    ROOT/VOC2007/ImageSets/Main/trainval.txt      one image id per line
    ROOT/VOC2007/JPEGImages/000001.jpg

A split is a list of sets ``"<year>/<image set>"`` (``["2007/trainval", "2012/trainval"]``); the
image of an id is ``JPEGImages/<id>.jpg`` (not the XML's ``<filename>``, which is wrong in some
files). XML is parsed with :mod:`defusedxml` (annotation files come from strangers too).

Coordinates: VOC boxes are 1-based inclusive pixel indices; they become 0-based continuous xyxy as
in detectron2, ``(xmin - 1, ymin - 1, xmax, ymax)``, so a box covering pixels 1..10 is 10 px wide.
:mod:`detector.evaluation.voc` undoes it for the devkit's metric and results files.

``difficult`` objects are kept in the ground truth as ``difficult`` (the evaluation neither counts
them as misses nor a detection on them as a false positive) and left out of the training targets
unless ``use_difficult``. An object whose class is not in the class list, a missing image-set file
or an XML that does not parse is an error naming the file (and the object).

Written here because no maintained library reads VOC into COCO form without pulling in a framework
(torchvision's ``VOCDetection`` returns raw XML dicts and knows one year at a time).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from detector.data.dataset import DetectionDataset
from detector.data.image_io import image_size
from detector.errors import DatasetError

__all__ = ["VOC_CLASSES", "VOCDetection", "load_voc"]

# The 20 classes, in the devkit's order (VOCinit.m); labels 1..20 follow it.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
FROM_XML = "from_xml"


class VOCDetection(DetectionDataset):
    """Images and boxes from one or more Pascal VOC image sets."""

    def __init__(
        self,
        *,
        root: str | Path,
        sets: Sequence[str],
        class_names: Sequence[str] | str | None = None,
        class_name_sets: Sequence[Any] | None = None,
        use_difficult: bool = False,
        **common: Any,
    ) -> None:
        """
        Args:
            root: The ``VOCdevkit`` folder (holding ``VOC2007/``, ``VOC2012/``, ...).
            sets: ``"<year>/<image set>"`` entries, e.g. ``["2007/trainval", "2012/trainval"]``.
            class_names: None = the 20 VOC classes; ``"from_xml"`` = the sorted names found in the
                XMLs of ``class_name_sets``; or a list (its order gives the labels).
            class_name_sets: The sets whose XMLs ``"from_xml"`` reads (lists are flattened), so
                that train and val agree on one class list; default ``sets``.
            use_difficult: Train on difficult objects too.
            **common: :class:`DetectionDataset`'s ``transforms``, ``skip_empty``, ``check_files``,
                ``proposals``, ``proposal_topk``.
        """
        self.root = Path(root)
        coco_dict = load_voc(
            self.root, sets, class_names=class_names, class_name_sets=class_name_sets
        )
        super().__init__(
            coco_dict=coco_dict, images_dir=self.root, source=f"{self.root} [{', '.join(sets)}]",
            use_difficult=use_difficult, **common,
        )


def _flatten(items: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, (list, tuple)) or (hasattr(item, "__iter__") and not isinstance(item, str)):
            out += _flatten(list(item))
        else:
            out.append(str(item))
    return out


def _image_set(root: Path, entry: str) -> tuple[str, list[str]]:
    """``"2007/trainval"`` -> (``"VOC2007"``, its image ids)."""
    year, sep, name = str(entry).partition("/")
    if not sep or not year or not name:
        raise DatasetError(f"VOC set {entry!r}: expected '<year>/<image set>', e.g. '2007/trainval'")
    folder = f"VOC{year}"
    if not (root / folder).is_dir():
        raise DatasetError(f"{root / folder}: VOC year folder not found (set {entry!r}); is {root} a VOCdevkit?")
    list_file = root / folder / "ImageSets" / "Main" / f"{name}.txt"
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: image set file not found (set {entry!r})")
    ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return folder, ids


def _parse(xml_file: Path) -> Element:
    try:
        return SafeET.parse(xml_file).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{xml_file}: annotation file not found") from None
    except ParseError as err:
        line, column = err.position
        raise DatasetError(f"{xml_file}: XML does not parse at line {line} column {column}: {err}") from None
    except DefusedXmlException as err:
        raise DatasetError(f"{xml_file}: refused XML ({type(err).__name__}: {err})") from None


def _text(node: Element | None, tag: str, default: str | None = None) -> str | None:
    child = node.find(tag) if node is not None else None
    return child.text.strip() if child is not None and child.text is not None else default


def _objects(xml_file: Path, root: Element) -> list[tuple[str, list[float], bool]]:
    """(name, [xmin, ymin, xmax, ymax] as in the file, difficult) per ``<object>``."""
    objects = []
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        box = obj.find("bndbox")
        try:
            coords = [float(_text(box, tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
            difficult = bool(int(float(_text(obj, "difficult", "0"))))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DatasetError(f"{xml_file}: object {k} ({name!r}) lacks a numeric bndbox/difficult") from None
        if not name:
            raise DatasetError(f"{xml_file}: object {k} has no <name>")
        objects.append((name, coords, difficult))
    return objects


def load_voc(
    root: str | Path,
    sets: Sequence[str],
    *,
    class_names: Sequence[str] | str | None = None,
    class_name_sets: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Read VOC image sets into a COCO instances dict (see :class:`VOCDetection` for the arguments).

    Images get ids ``1..N`` in set order; ``file_name`` is relative to ``root``
    (``VOC2007/JPEGImages/000001.jpg``). Categories are ``1..K`` in class-list order.

    Raises:
        DatasetError: A missing folder, image-set or XML file, an XML that does not parse, an
            object without a numeric box, or an object whose class is not in the class list.
    """
    root = Path(root)
    sets = _flatten(list(sets))
    if not sets:
        raise DatasetError(f"{root}: no VOC sets given (e.g. sets='[2007/trainval]')")
    entries = []  # (folder, image id, xml root)
    for entry in sets:
        folder, ids = _image_set(root, entry)
        for image_id in ids:
            xml_file = root / folder / "Annotations" / f"{image_id}.xml"
            entries.append((folder, image_id, xml_file, _parse(xml_file)))

    if class_names is None:
        names = list(VOC_CLASSES)
    elif isinstance(class_names, str):
        if class_names != FROM_XML:
            raise DatasetError(f"class_names must be null, {FROM_XML!r} or a list of names, got {class_names!r}")
        found: set[str] = set()
        name_sets = _flatten(list(class_name_sets)) if class_name_sets else sets
        parsed = {(f, i): r for f, i, _, r in entries}
        for entry in name_sets:
            folder, ids = _image_set(root, entry)
            for image_id in ids:
                xml_root = parsed.get((folder, image_id))
                xml_file = root / folder / "Annotations" / f"{image_id}.xml"
                found.update(name for name, _, _ in _objects(xml_file, xml_root if xml_root is not None else _parse(xml_file)))
        names = sorted(found)
    else:
        names = [str(n) for n in class_names]
    cat_of = {name: i + 1 for i, name in enumerate(names)}

    images, annotations = [], []
    for image_id, (folder, voc_id, xml_file, xml_root) in enumerate(entries, start=1):
        file_name = f"{folder}/JPEGImages/{voc_id}.jpg"
        size = xml_root.find("size")
        try:
            width, height = int(float(_text(size, "width", "0"))), int(float(_text(size, "height", "0")))  # type: ignore[arg-type]
        except ValueError:
            width = height = 0
        if width <= 0 or height <= 0:  # some tools write no <size>: read the image's header
            width, height = image_size(root / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height, "voc_id": voc_id})
        for k, (name, (x1, y1, x2, y2), difficult) in enumerate(_objects(xml_file, xml_root), start=1):
            if name not in cat_of:
                raise DatasetError(
                    f"{xml_file}: object {k} has class {name!r}, which is not in the class list "
                    f"({len(names)} names: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
                    f"add it to class_names or use class_names={FROM_XML}"
                )
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat_of[name],
                # 1-based inclusive -> 0-based continuous: (x1 - 1, y1 - 1, x2, y2).
                "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "iscrowd": 0,
                "difficult": int(difficult), "source": f"{xml_file} object {k}",
            })
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    return {"images": images, "annotations": annotations, "categories": categories}
