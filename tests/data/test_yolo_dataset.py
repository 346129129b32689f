"""YOLO (Ultralytics layout): the fixture (tests/fixtures/formats), polygons, split forms, names forms, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from detector.data import YOLODetection
from detector.data.yolo import label_path
from detector.errors import DatasetError

from conftest import FORMATS as FIXTURES


def make_yolo(root: Path, labels: dict[str, str], data: str | None = None, size=(100, 50)) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, text in labels.items():
        Image.new("RGB", size).save(root / "images" / "train" / f"{name}.jpg")
        (root / "labels" / "train" / f"{name}.txt").write_text(text)
    Image.new("RGB", size).save(root / "images" / "val" / "v.jpg")
    (root / "data.yaml").write_text(data or "path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    return root / "data.yaml"


def test_fixture_boxes_polygons_empty_and_missing_label_files():
    ds = YOLODetection(data=FIXTURES / "yolo" / "data.yaml", split="train")
    assert ds.class_names == ("boat", "kite", "traffic cone")
    assert ds.label_to_cat_id == {1: 0, 2: 1, 3: 2}  # category ids = YOLO class indices
    by_name = {Path(ds.coco.imgs[ds[i][1]["image_id"]]["file_name"]).name: ds[i][1] for i in range(len(ds))}
    assert set(by_name) == {"a.jpg", "b.jpg", "c.jpg", "d.png"}
    b = by_name["b.jpg"]  # 200 x 100: a box line, then a polygon line (its box x .05-.3, y .1-.5)
    assert b["boxes"][1].tolist() == pytest.approx([0.05 * 200, 0.1 * 100, 0.3 * 200, 0.5 * 100])
    assert b["boxes"][0].tolist() == pytest.approx([0.4 * 200, 0.3 * 100, 0.6 * 200, 0.7 * 100])
    assert b["labels"].tolist() == [2, 1]  # class 1, then class 0 (labels are class index + 1)
    assert by_name["c.jpg"]["boxes"].shape == (0, 4) and by_name["d.png"]["boxes"].shape == (0, 4)
    image, _ = ds[[Path(ds.coco.imgs[i]["file_name"]).name for i in ds.ids].index("d.png")]
    assert image.shape == (3, 100, 200)  # the grayscale PNG comes out RGB
    val = YOLODetection(data=FIXTURES / "yolo" / "data.yaml", split="val")
    assert len(val) == 1 and val[0][1]["labels"].tolist() == [3]


def test_label_path_replaces_the_last_images_folder():
    assert label_path(Path("/d/images/x/images/a.b.jpg")) == Path("/d/images/x/labels/a.b.txt")


def test_txt_list_and_list_of_splits_and_names_list(tmp_path):
    data = make_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.4 0.4\n"})
    (tmp_path / "train.txt").write_text("images/train/a.jpg\n./images/train/b.jpg\n")
    data.write_text("path: .\ntrain: [train.txt, images/val]\nval: images/val\nnames: [cat, dog]\n")
    ds = YOLODetection(data=data, split="train")
    assert len(ds) == 3 and ds.class_names == ("cat", "dog")
    assert sorted(len(ds[i][1]["labels"]) for i in range(3)) == [0, 1, 1]


@pytest.mark.parametrize("line,message", [
    ("2 0.5 0.5 0.2 0.2", r"a\.txt:2: class 2 is not in names \(0\.\.1\)"),
    ("0 0.5 0.5 0.2", r"a\.txt:2: 4 columns"),
    ("0 0.1 0.2 0.3 0.4 0.5 0.6 0.7", r"a\.txt:2: 8 columns"),
    ("0 50 20 10 10", r"a\.txt:2: values must be normalised to \[0, 1\].*pixels"),
    ("0 0.5 0.5 x 0.2", r"a\.txt:2: not numbers"),
])
def test_bad_label_lines_name_file_and_line(tmp_path, line, message):
    data = make_yolo(tmp_path, {"a": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(DatasetError, match=message) as err:
        YOLODetection(data=data, split="train")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("path: .\nval: images/val\nnames: [a]\n", r"data\.yaml: no 'train'"),
    ("path: .\ntrain: images/train\nval: images/val\n", r"data\.yaml: no 'names'"),
    ("path: .\ntrain: images/train\nval: images/val\nnames: {0: a, 2: b}\n", r"'names' indices must be 0\.\.1"),
    ("path: .\ntrain: nowhere\nval: images/val\nnames: [a]\n", r"split entry 'nowhere' is neither a folder"),
    ("train: [a\n", r"data\.yaml: invalid YAML at line"),
])
def test_bad_data_yaml(tmp_path, text, message):
    data = make_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, data=text)
    with pytest.raises(DatasetError, match=message):
        YOLODetection(data=data, split="train")


def test_data_yaml_without_val_fails_for_the_val_split(tmp_path):
    data = make_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, data="path: .\ntrain: images/train\nnames: [a]\n")
    assert len(YOLODetection(data=data, split="train")) == 1
    with pytest.raises(DatasetError, match=r"data\.yaml: no 'val'"):
        YOLODetection(data=data, split="val")


def test_slight_overshoot_is_clipped_with_one_warning(tmp_path):
    data = make_yolo(tmp_path, {"a": "0 0.9 0.5 0.205 0.2\n"})
    with pytest.warns(UserWarning, match=r"1 box\(es\) clipped to the image .*first: .*a\.txt:1"):
        ds = YOLODetection(data=data, split="train")
    assert ds[0][1]["boxes"][0, 2].item() == pytest.approx(100.0)
