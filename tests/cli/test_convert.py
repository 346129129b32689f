"""tools/convert_dataset.py in-process: COCO <-> YOLO <-> VOC round trips keep boxes and class names."""

from __future__ import annotations

import json

import pytest

from conftest import FORMATS, compose_config
from detector.data import CocoDetection, VOCDetection, YOLODetection
from detector.data.synthetic import generate_synthetic_coco


@pytest.fixture(scope="module")
def coco_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, *generate_synthetic_coco(root, split="train", num_images=5, seed=3, min_image_size=96, max_image_size=131)


def convert(overrides):
    from detector.cli import convert as convert_dataset

    return convert_dataset.convert(compose_config("convert", overrides))


def coco_args(images, annotations):
    return ["dataset=coco_json", f"dataset.train.images={images}", f"dataset.train.annotations={annotations}",
            f"dataset.val.images={images}", f"dataset.val.annotations={annotations}", "splits=[train]"]


def boxes_by_image(ds):
    out = {}
    for ann in ds.coco.dataset["annotations"]:
        name = ds.coco.imgs[ann["image_id"]]["file_name"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        out.setdefault(name, []).append((ds.coco.cats[ann["category_id"]]["name"], ann["bbox"]))
    return {k: sorted(v, key=lambda t: (t[0], t[1])) for k, v in out.items()}


def test_coco_to_yolo_to_coco_keeps_boxes_within_rounding_and_names(coco_split, tmp_path):
    _, images, annotations = coco_split
    original = CocoDetection(images=images, annotations=annotations)
    convert([*coco_args(images, annotations), "to=yolo", f"output={tmp_path / 'yolo'}"])
    yolo = YOLODetection(data=tmp_path / "yolo" / "data.yaml", split="train")
    assert yolo.class_names == original.class_names
    convert(["dataset=yolo", f"dataset.data={tmp_path / 'yolo' / 'data.yaml'}", "splits=[train]", "to=coco",
             f"output={tmp_path / 'back'}"])
    back = CocoDetection(images=tmp_path / "back" / "train" / "images", annotations=tmp_path / "back" / "train" / "annotations.json")
    assert back.class_names == original.class_names and len(back) == len(original)
    a, b = boxes_by_image(original), boxes_by_image(back)
    assert a.keys() == b.keys()
    for name in a:
        width = next(i["width"] for i in original.coco.imgs.values() if i["file_name"].startswith(name))
        for (ca, ba), (cb, bb) in zip(a[name], b[name]):
            # 6 decimals of a normalised value: at most 5e-7 * image side, plus float noise.
            assert ca == cb and max(abs(x - y) for x, y in zip(ba, bb)) <= 5e-7 * max(width, 200) + 1e-3


def test_coco_to_voc_to_coco_keeps_boxes_and_flags(coco_split, tmp_path):
    _, images, annotations = coco_split
    data = json.loads(annotations.read_text())
    data["annotations"][0]["iscrowd"] = 1  # becomes difficult in VOC
    (tmp_path / "flags.json").write_text(json.dumps(data))
    original = CocoDetection(images=images, annotations=tmp_path / "flags.json")
    convert([*coco_args(images, tmp_path / "flags.json"), "to=voc", f"output={tmp_path / 'voc'}"])
    voc = VOCDetection(root=tmp_path / "voc", sets=["2007/train"], class_names=list(original.class_names))
    assert voc.class_names == original.class_names and len(voc) == len(original)
    a, b = boxes_by_image(original), boxes_by_image(voc)
    for name in a:
        for (ca, ba), (cb, bb) in zip(a[name], b[name]):
            assert ca == cb and max(abs(x - y) for x, y in zip(ba, bb)) <= 0.005 + 1e-6  # 2 decimals
    assert sum(ann["difficult"] for ann in voc.coco.dataset["annotations"]) == 1


def test_voc_fixture_to_yolo(tmp_path):
    convert(["dataset=voc", f"dataset.root={FORMATS / 'VOCdevkit'}", "dataset.class_names=from_xml",
             "dataset.train.sets=[2007/trainval,2012/trainval]", "dataset.val.sets=[2007/test]", "to=yolo",
             f"output={tmp_path / 'y'}"])
    train = YOLODetection(data=tmp_path / "y" / "data.yaml", split="train")
    assert train.class_names == ("cat", "person", "train") and len(train) == 2
    assert sorted(len(train[i][1]["labels"]) for i in range(2)) == [1, 2]


def test_bad_target_format(coco_split, tmp_path):
    from detector.errors import ConfigError

    _, images, annotations = coco_split
    with pytest.raises(ConfigError, match="to must be one of coco, yolo, voc"):
        convert([*coco_args(images, annotations), "to=labelme", f"output={tmp_path}"])


def test_rename_merge_and_drop_classes(coco_split, tmp_path):
    _, images, annotations = coco_split
    original = CocoDetection(images=images, annotations=annotations)
    convert([*coco_args(images, annotations), "to=coco", f"output={tmp_path / 'c'}", "rename={cross: plus, ring: circle}",
             "drop=[triangle]"])
    out = CocoDetection(images=tmp_path / "c" / "train" / "images", annotations=tmp_path / "c" / "train" / "annotations.json")
    assert out.class_names == ("circle", "square", "plus")
    count = {n: sum(1 for a in original.coco.dataset["annotations"] if original.coco.cats[a["category_id"]]["name"] == n)
             for n in original.class_names}
    got = {n: sum(1 for a in out.coco.dataset["annotations"] if out.coco.cats[a["category_id"]]["name"] == n)
           for n in out.class_names}
    assert got == {"circle": count["circle"] + count["ring"], "square": count["square"], "plus": count["cross"]}


def test_voc_keeps_train_and_val_images_of_the_same_name_apart(tmp_path):
    """The synthetic splits both start at 000000.jpg: VOC's one JPEGImages/ must hold both."""
    root = tmp_path / "syn"
    train = generate_synthetic_coco(root, split="train", num_images=4, seed=1, min_image_size=96, max_image_size=128)
    val = generate_synthetic_coco(root, split="val", num_images=3, seed=2, min_image_size=96, max_image_size=128)
    convert(["dataset=coco_json", f"dataset.train.images={train[0]}", f"dataset.train.annotations={train[1]}",
             f"dataset.val.images={val[0]}", f"dataset.val.annotations={val[1]}", "to=voc", f"output={tmp_path / 'voc'}"])
    for split, (images, annotation_file) in (("train", train), ("val", val)):
        original = CocoDetection(images=images, annotations=annotation_file)
        back = VOCDetection(root=tmp_path / "voc", sets=[f"2007/{split}"], class_names="from_xml")
        assert len(back) == len(original)
        sources = json.loads((tmp_path / "voc" / "VOC2007" / f"sources_{split}.json").read_text())
        for i in range(len(original)):  # every image is the one its split had, with its boxes
            voc_id = back.coco.imgs[back.ids[i]]["file_name"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            image_id = sources[voc_id]["image_id"]
            assert sources[voc_id]["file_name"] == original.coco.imgs[image_id]["file_name"]
            got = sorted(round(v) for a in back.coco.imgToAnns[back.ids[i]] for v in a["bbox"])
            want = sorted(round(v) for a in original.coco.imgToAnns[image_id] for v in a["bbox"])
            assert got == want, (split, voc_id)
    assert len(list((tmp_path / "voc" / "VOC2007" / "JPEGImages").iterdir())) == 7


def test_convert_refuses_an_output_folder_that_holds_files(coco_split, tmp_path):
    from detector.errors import ConfigError

    _, images, annotations = coco_split
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="already holds files"):
        convert([*coco_args(images, annotations), "to=yolo", f"output={tmp_path / 'out'}"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
