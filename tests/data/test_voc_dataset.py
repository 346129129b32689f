"""Pascal VOC: the devkit fixture (tests/fixtures/formats), coordinates, class lists, difficult objects, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from detector.data import VOC_CLASSES, VOCDetection
from detector.errors import DatasetError

from conftest import FORMATS as FIXTURES


def _xml(objects: list[tuple[str, tuple[int, int, int, int], int]], size=(60, 40)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objs}</annotation>"


def make_devkit(root: Path, year: str, images: dict[str, list], image_set: str = "trainval") -> Path:
    base = root / f"VOC{year}"
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for voc_id, objects in images.items():
        (base / "Annotations" / f"{voc_id}.xml").write_text(_xml(objects))
        Image.new("RGB", (60, 40), (90, 90, 90)).save(base / "JPEGImages" / f"{voc_id}.jpg")
    (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


def test_fixture_devkits_two_years_one_based_boxes_and_ids_from_imagesets():
    ds = VOCDetection(root=FIXTURES / "VOCdevkit", sets=["2007/trainval", "2012/trainval"])
    assert ds.class_names == VOC_CLASSES and len(ds) == 2
    _, t07 = ds[0]
    # cat 31,41,150,160 and person 160,20,290,195 (1-based inclusive) -> (x1 - 1, y1 - 1, x2, y2); the
    # difficult person is ground truth, not a target.
    assert t07["boxes"].tolist() == [[30, 40, 150, 160], [159, 19, 290, 195]]
    assert t07["labels"].tolist() == [VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("person") + 1]
    assert t07["orig_size"] == (200, 300)
    # The VOC2012 XML names wrong_name.jpg; the image comes from its ImageSets id (000007).
    assert ds.coco.imgs[2]["file_name"] == "VOC2012/JPEGImages/000007.jpg"
    assert ds[1][1]["labels"].tolist() == [VOC_CLASSES.index("train") + 1]


def test_class_names_from_xml_are_sorted():
    ds = VOCDetection(root=FIXTURES / "VOCdevkit", sets=["2007/trainval", "2012/trainval"], class_names="from_xml")
    assert ds.class_names == ("cat", "person", "train")


def test_difficult_objects_are_ground_truth_but_not_targets(tmp_path):
    root = make_devkit(tmp_path, "2007", {"a": [("cat", (1, 1, 20, 20), 0), ("dog", (30, 5, 50, 30), 1)]})
    ds = VOCDetection(root=root, sets=["2007/trainval"], class_names=["cat", "dog"])
    assert ds[0][1]["labels"].tolist() == [1]
    assert [a["difficult"] for a in ds.coco.dataset["annotations"]] == [0, 1]
    trained = VOCDetection(root=root, sets=["2007/trainval"], class_names=["cat", "dog"], use_difficult=True)
    assert trained[0][1]["labels"].tolist() == [1, 2]


def test_object_of_unknown_class_names_the_file_and_object(tmp_path):
    root = make_devkit(tmp_path, "2007", {"a": [("cat", (1, 1, 20, 20), 0), ("zebra", (2, 2, 9, 9), 0)]})
    with pytest.raises(DatasetError, match=r"a\.xml: object 2 has class 'zebra'.*class_names=from_xml") as err:
        VOCDetection(root=root, sets=["2007/trainval"])
    assert "\n" not in str(err.value)


def test_missing_image_set_file(tmp_path):
    root = make_devkit(tmp_path, "2007", {"a": [("cat", (1, 1, 20, 20), 0)]})
    with pytest.raises(DatasetError, match=r"ImageSets/Main/test\.txt: image set file not found"):
        VOCDetection(root=root, sets=["2007/test"])
    with pytest.raises(DatasetError, match=r"VOC2012: VOC year folder not found"):
        VOCDetection(root=root, sets=["2012/trainval"])
    with pytest.raises(DatasetError, match=r"expected '<year>/<image set>'"):
        VOCDetection(root=root, sets=["trainval"])


def test_xml_that_does_not_parse_names_line_and_column(tmp_path):
    root = make_devkit(tmp_path, "2007", {"a": [("cat", (1, 1, 20, 20), 0)]})
    (root / "VOC2007" / "Annotations" / "a.xml").write_text("<annotation>\n<object><name>cat</name>\n</annotation>")
    with pytest.raises(DatasetError, match=r"a\.xml: XML does not parse at line 3 column"):
        VOCDetection(root=root, sets=["2007/trainval"])


def test_entity_expansion_is_refused(tmp_path):
    root = make_devkit(tmp_path, "2007", {"a": [("cat", (1, 1, 20, 20), 0)]})
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><annotation>&b;</annotation>'
    (root / "VOC2007" / "Annotations" / "a.xml").write_text(bomb)
    with pytest.raises(DatasetError, match=r"a\.xml: refused XML"):
        VOCDetection(root=root, sets=["2007/trainval"])


def test_missing_images_are_reported_together(tmp_path):
    root = make_devkit(tmp_path, "2007", {"a": [("cat", (1, 1, 20, 20), 0)], "b": [("cat", (1, 1, 9, 9), 0)]})
    for name in ("a", "b"):
        (root / "VOC2007" / "JPEGImages" / f"{name}.jpg").unlink()
    with pytest.raises(DatasetError, match=r"2 of 2 image files not found .*a\.jpg, VOC2007/JPEGImages/b\.jpg"):
        VOCDetection(root=root, sets=["2007/trainval"])
    shutil.rmtree(root)
