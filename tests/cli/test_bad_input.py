"""Bad input is one line naming the file (and line or object) and the fix: the cases of issue #9."""

from __future__ import annotations

import json
import warnings

import pytest
from PIL import Image

from conftest import TINY_MODEL, compose_config
from detector.data import CocoDetection
from detector.errors import CheckpointError, ConfigError, DatasetError

RUN = [*TINY_MODEL, "solver.max_iter=1", "solver.ims_per_batch=1", "solver.warmup_iters=0", "progress=false",
       "device=cpu", "checkpoint_period=0"]


def write_coco(root, name, images, annotations, categories=({"id": 1, "name": "a"},)):
    (root / "img").mkdir(exist_ok=True)
    for im in images:
        if not (root / "img" / im["file_name"]).exists():
            Image.new("RGB", (im["width"], im["height"]), (50, 60, 70)).save(root / "img" / im["file_name"])
    path = root / name
    path.write_text(json.dumps({"images": list(images), "annotations": list(annotations), "categories": list(categories)}))
    return path


def image(i, w=64, h=48):
    return {"id": i, "file_name": f"{i}.png", "width": w, "height": h}


def box(i, image_id, bbox, cat=1):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}


def coco_args(root, train, val, num_workers=0):
    return ["dataset=coco_json", f"dataset.train.images={root / 'img'}", f"dataset.train.annotations={train}",
            f"dataset.val.images={root / 'img'}", f"dataset.val.annotations={val}", f"num_workers={num_workers}"]


def run_train(overrides, out):
    from detector.cli import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train.train(compose_config("train", [*overrides, *RUN, f"output_dir={out}"]))


@pytest.fixture()
def good(tmp_path):
    train = write_coco(tmp_path, "train.json", [image(1), image(2)], [box(1, 1, [5, 5, 20, 20]), box(2, 2, [10, 10, 30, 20])])
    return tmp_path, train


def test_unusable_boxes_one_summary_warning_and_the_same_rule_for_evaluation(tmp_path):
    anns = [box(1, 1, [5, 5, 20, 20]), box(2, 1, [5, 5, 0, 10]), box(3, 1, [5, 5, -4, 10]),
            box(4, 1, [float("nan"), 5, 10, 10]), box(5, 1, [100, 100, 10, 10]), box(6, 1, [50, 40, 30, 30])]
    path = write_coco(tmp_path, "x.json", [image(1)], anns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(images=tmp_path / "img", annotations=path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "x.json: 1 box(es) clipped to the image, 4 dropped" in message
    assert "2 zero or negative size" in message and "1 non-finite" in message and "1 outside the image" in message
    assert "first: annotation id 2" in message and "for training and evaluation alike" in message
    assert ds[0][1]["boxes"].tolist() == [[5, 5, 25, 25], [50, 40, 64, 48]]
    assert sorted(ds.coco.anns) == [1, 6] and ds.coco.anns[6]["bbox"] == [50, 40, 14, 8]  # what eval scores


def test_empty_val_split_and_val_without_boxes(good):
    root, train = good
    empty = write_coco(root, "empty.json", [], [])
    with pytest.raises(DatasetError, match=r"empty\.json: the dataset\.val split has no images"):
        run_train(coco_args(root, train, empty), root / "o1")
    no_boxes = write_coco(root, "nobox.json", [image(1)], [])
    with pytest.raises(DatasetError, match=r"nobox\.json: the dataset\.val split has no ground-truth boxes"):
        run_train(coco_args(root, train, no_boxes), root / "o2")
    with pytest.raises(DatasetError, match=r"no image with a usable box to train on"):
        run_train(coco_args(root, no_boxes, train), root / "o3")


def test_val_classes_differing_from_train(good):
    root, train = good
    other = write_coco(root, "other.json", [image(1)], [box(1, 1, [5, 5, 20, 20])], [{"id": 1, "name": "b"}])
    with pytest.raises(DatasetError, match=r"other\.json: classes \['b'\] differ from .*train\.json's \['a'\]"):
        run_train(coco_args(root, train, other), root / "o")


def test_weights_missing_foreign_and_with_resume(good):
    root, train = good
    with pytest.raises(CheckpointError, match=r"model\.weights: weights file not found: .*nope\.pth"):
        run_train([*coco_args(root, train, train), f"model.weights={root / 'nope.pth'}"], root / "o1")
    import torch

    torch.save({"x": torch.zeros(2)}, root / "foreign.pth")
    with pytest.raises(CheckpointError, match=r"model\.weights: .*foreign\.pth: none of its 1 tensors fits"):
        run_train([*coco_args(root, train, train), f"model.weights={root / 'foreign.pth'}"], root / "o2")
    with pytest.raises(ConfigError, match=r"model\.weights starts a new run .* resume=true continues"):
        run_train([*coco_args(root, train, train), f"model.weights={root / 'foreign.pth'}", "resume=true"], root / "o3")


def test_corrupt_image_in_a_worker_is_one_line_naming_it(good):
    from detector.cli.config import user_message

    root, train = good
    (root / "img" / "2.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(DatasetError) as err:
        run_train([*coco_args(root, train, train, num_workers=1), "solver.max_iter=4"], root / "o")
    line = user_message(err.value)
    assert "\n" not in line and line.endswith("2.png: cannot read image (UnidentifiedImageError: cannot identify "
                                              f"image file '{root / 'img' / '2.png'}')")


def test_finetune_across_class_lists_end_to_end(good, caplog):
    import logging

    root, train = good
    run_train(coco_args(root, train, train), root / "first")
    other = write_coco(root, "other.json", [image(1), image(2)], [box(1, 1, [5, 5, 20, 20], 2), box(2, 2, [9, 9, 9, 9], 1)],
                       [{"id": 1, "name": "a"}, {"id": 2, "name": "new"}])
    with caplog.at_level(logging.WARNING):
        metrics = run_train([*coco_args(root, other, other), f"model.weights={root / 'first' / 'model_final.pth'}"],
                            root / "second")
    assert "AP50" in metrics
    assert "box predictor rows copied by class name (+ background): a" in caplog.text
    assert "initialised fresh (classes the checkpoint lacks): new" in caplog.text
