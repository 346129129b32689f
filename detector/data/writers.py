"""Write a dataset split in COCO JSON, YOLO or Pascal VOC layout (``tools/convert_dataset.py``).

Any :class:`~detector.data.DetectionDataset` can be written, so every format converts to every
other through the one contract. What is written is the dataset's ground truth *after* its box rule
(clipped, unusable boxes dropped), with the class names in label order:

* COCO: ``OUT/<split>/annotations.json`` + ``OUT/<split>/images/``; category ids and image ids are
  kept, crowd / ignore / difficult flags too.
* YOLO: ``OUT/images/<split>/``, ``OUT/labels/<split>/*.txt`` (``class cx cy w h`` normalised, 6
  decimals, class = label - 1) and ``OUT/data.yaml`` (``names`` as a list). YOLO has no crowd or
  difficult flag: such boxes are left out and counted.
* VOC: ``OUT/VOC<year>/{Annotations,ImageSets/Main/<split>.txt,JPEGImages}``; boxes back to 1-based
  inclusive pixels (``x1 + 1, y1 + 1, x2, y2``, the reader's inverse); crowd and ignore regions are
  written as ``difficult``; images that are not JPEG are re-encoded (quality 95), since the devkit
  layout names ``<id>.jpg``.

Shape shorthand:
    W, H: width and height of one image in pixels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image

from detector.data.dataset import DetectionDataset, is_ignored
from detector.utils.io import atomic_write_text

__all__ = ["write_coco", "write_voc", "write_yolo"]


def _place_image(src: Path, dst: Path, *, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link:
        dst.symlink_to(src.resolve())
    else:
        shutil.copy2(src, dst)


def _unique_names(
    dataset: DetectionDataset, suffix: str | None = None, *, taken: set[str] | None = None, prefix: str = ""
) -> dict[int, str]:
    """image id -> a flat, unique file name: the original's; ``prefix`` + it when another split of
    the same output already took it (``taken``, updated); with the image id too when two collide."""
    names: dict[int, str] = {}
    seen: set[str] = taken if taken is not None else set()
    for image_id in dataset.ids:
        path = Path(str(dataset.coco.imgs[image_id]["file_name"]))
        stem, ext = path.stem, suffix or path.suffix
        name = stem + ext
        if name in seen and prefix:
            name = f"{prefix}{stem}{ext}"
        if name in seen:
            name = f"{prefix}{stem}_{image_id}{ext}"
        seen.add(name)
        names[image_id] = name
    return names


def write_coco(dataset: DetectionDataset, out: str | Path, split: str, *, link: bool = False) -> Path:
    """``OUT/<split>/annotations.json`` and its images; returns the annotation file."""
    out = Path(out) / split
    names = _unique_names(dataset)
    images, annotations = [], []
    keep = set(dataset.ids)
    for image_id in dataset.ids:
        info = dataset.coco.imgs[image_id]
        _place_image(dataset.image_path(image_id), out / "images" / names[image_id], link=link)
        images.append({"id": image_id, "file_name": names[image_id], "width": info["width"], "height": info["height"]})
    for ann in dataset.coco.dataset["annotations"]:
        if ann["image_id"] in keep:
            entry = {k: ann[k] for k in ("id", "image_id", "category_id", "bbox", "area", "iscrowd")}
            for flag in ("ignore", "difficult"):
                if ann.get(flag):
                    entry[flag] = int(ann[flag])
            annotations.append(entry)
    categories = [{"id": cat_id, "name": dataset.coco.cats[cat_id]["name"]} for cat_id in sorted(dataset.coco.cats)]
    target = out / "annotations.json"
    atomic_write_text(target, json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return target


def write_yolo(dataset: DetectionDataset, out: str | Path, split: str, *, link: bool = False) -> tuple[Path, int]:
    """Images, label files and ``data.yaml`` (updated with this split); returns (data.yaml, boxes left out)."""
    out = Path(out)
    names = _unique_names(dataset)
    left_out = 0
    per_image: dict[int, list[str]] = {image_id: [] for image_id in dataset.ids}
    for ann in dataset.coco.dataset["annotations"]:
        if ann["image_id"] not in per_image:
            continue
        if is_ignored(ann):
            left_out += 1  # YOLO has no such flag
            continue
        info = dataset.coco.imgs[ann["image_id"]]
        w_img, h_img = float(info["width"]), float(info["height"])
        x, y, w, h = ann["bbox"]
        cls = dataset.cat_id_to_label[ann["category_id"]] - 1
        per_image[ann["image_id"]].append(
            f"{cls} {(x + w / 2) / w_img:.6f} {(y + h / 2) / h_img:.6f} {w / w_img:.6f} {h / h_img:.6f}"
        )
    for image_id, lines in per_image.items():
        name = names[image_id]
        _place_image(dataset.image_path(image_id), out / "images" / split / name, link=link)
        atomic_write_text(out / "labels" / split / (Path(name).stem + ".txt"), "".join(line + "\n" for line in lines))
    data_file = out / "data.yaml"
    splits = {}
    if data_file.is_file():  # another split written before: keep its entry
        for line in data_file.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("train", "val", "test") and value.strip():
                splits[key] = value.strip()
    splits[split] = f"images/{split}"
    body = "# written by tools/convert_dataset.py\npath: .\n" + "".join(f"{k}: {v}\n" for k, v in sorted(splits.items()))
    body += "names:\n" + "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(dataset.class_names))
    atomic_write_text(data_file, body)
    return data_file, left_out


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def write_voc(
    dataset: DetectionDataset, out: str | Path, split: str, *, year: str = "2007", taken: set[str] | None = None
) -> Path:
    """``OUT/VOC<year>/`` with this split's image set; returns the year folder.

    VOC keeps every split's images in one ``JPEGImages/`` (the image sets list the ids), so two
    splits with an image of the same name (``000000.jpg`` in both) would write one file twice:
    ``taken`` (one set shared by the splits of a conversion) makes a later split's name
    ``<split>_<name>`` instead. ``sources_<split>.json`` beside the image sets maps each VOC id to
    the image's id and file name in the source dataset.
    """
    base = Path(out) / f"VOC{year}"
    names = _unique_names(dataset, suffix=".jpg", taken=taken if taken is not None else set(), prefix=f"{split}_")
    by_image: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in dataset.ids}
    for ann in dataset.coco.dataset["annotations"]:
        if ann["image_id"] in by_image:
            by_image[ann["image_id"]].append(ann)
    for image_id in dataset.ids:
        voc_id = Path(names[image_id]).stem
        src, dst = dataset.image_path(image_id), base / "JPEGImages" / names[image_id]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copy2(src, dst)
        else:
            with Image.open(src) as img:
                img.convert("RGB").save(dst, quality=95)
        info = dataset.coco.imgs[image_id]
        objects = []
        for ann in by_image[image_id]:
            x, y, w, h = ann["bbox"]
            difficult = int(is_ignored(ann))
            objects.append(
                f"\t<object>\n\t\t<name>{escape(dataset.coco.cats[ann['category_id']]['name'])}</name>\n"
                f"\t\t<difficult>{difficult}</difficult>\n\t\t<bndbox>\n"
                f"\t\t\t<xmin>{_number(x + 1)}</xmin>\n\t\t\t<ymin>{_number(y + 1)}</ymin>\n"
                f"\t\t\t<xmax>{_number(x + w)}</xmax>\n\t\t\t<ymax>{_number(y + h)}</ymax>\n"
                f"\t\t</bndbox>\n\t</object>\n"
            )
        xml = (
            f"<annotation>\n\t<folder>VOC{year}</folder>\n\t<filename>{escape(names[image_id])}</filename>\n"
            f"\t<size>\n\t\t<width>{info['width']}</width>\n\t\t<height>{info['height']}</height>\n"
            f"\t\t<depth>3</depth>\n\t</size>\n{''.join(objects)}</annotation>\n"
        )
        atomic_write_text(base / "Annotations" / f"{voc_id}.xml", xml)
    ids = "".join(Path(names[i]).stem + "\n" for i in dataset.ids)
    atomic_write_text(base / "ImageSets" / "Main" / f"{split}.txt", ids)
    sources = {Path(names[i]).stem: {"image_id": i, "file_name": str(dataset.coco.imgs[i]["file_name"])}
               for i in dataset.ids}
    atomic_write_text(base / f"sources_{split}.json", json.dumps(sources, indent=1))
    return base
