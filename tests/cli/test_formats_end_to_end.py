"""Every format trains and evaluates through train(cfg) / evaluate(cfg), in-process: the VOC and
YOLO fixtures (tests/fixtures/formats), and a tiny generated set converted to each format; results files of other tools."""

from __future__ import annotations

import json
import warnings

import pytest

from conftest import FORMATS, TINY_MODEL, compose_config

pytestmark = pytest.mark.slow

RUN = [*TINY_MODEL, "solver.max_iter=2", "solver.ims_per_batch=2", "solver.warmup_iters=1", "num_workers=0",
       "progress=false", "device=cpu", "seed=0", "log_period=1", "checkpoint_period=0"]


def train(overrides, out):
    from detector.cli import train as train_tool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixtures' clipping warnings are tested in tests/data
        return train_tool.train(compose_config("train", [*overrides, *RUN, f"output_dir={out}"]))


def evaluate(overrides, out):
    from detector.cli import eval as eval_tool

    return eval_tool.evaluate(compose_config("eval", [*overrides, "progress=false", "num_workers=0",
                                                      "device=cpu", f"output_dir={out}"]))


def test_voc_fixture_trains_and_evaluates_with_voc_results(tmp_path):
    voc = ["dataset=voc", f"dataset.root={FORMATS / 'VOCdevkit'}",
           "dataset.train.sets=[2007/trainval,2012/trainval]", "dataset.val.sets=[2007/test]"]
    metrics = train(voc, tmp_path / "run")
    assert set(metrics) >= {"AP", "AP50"}
    state_classes = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "AP" in state_classes
    rows = evaluate([f"checkpoints=[{tmp_path / 'run' / 'model_final.pth'}]", *voc, "voc_results=true"], tmp_path / "eval")
    assert rows[0]["VOC07"] is not None and "AP" in rows[0]
    files = sorted(p.name for p in (tmp_path / "eval").glob("0_*/voc_results/*.txt"))
    assert len(files) == 20 and "comp4_det_test_cat.txt" in files
    for line in (tmp_path / "eval").glob("0_*/voc_results/comp4_det_test_cat.txt").__next__().read_text().splitlines():
        image_id, score, *box = line.split()
        assert image_id == "000005" and 0 <= float(score) <= 1 and len(box) == 4


def test_yolo_fixture_trains_and_evaluates(tmp_path):
    yolo = ["dataset=yolo", f"dataset.data={FORMATS / 'yolo' / 'data.yaml'}"]
    train(yolo, tmp_path / "run")
    rows = evaluate([f"checkpoints=[{tmp_path / 'run' / 'model_final.pth'}]"], tmp_path / "eval")  # its own dataset
    assert rows[0]["model"].startswith("RoIAlign")


def test_results_files_by_file_name_and_class_name_score_like_ids(tmp_path):
    """A results file of another tool: image ids as VOC ids / file names, categories as class names."""
    voc = ["dataset=voc", f"dataset.root={FORMATS / 'VOCdevkit'}",
           "dataset.train.sets=[2007/trainval]", "dataset.val.sets=[2007/trainval]"]
    # The fixture's cat (30, 40, 150, 160) and person (159, 19, 290, 195) in 0-based xyxy, as COCO xywh;
    # VOC's category ids are the class indices + 1 (cat 8, person 15). The difficult person is not missed.
    dog = {"bbox": [30, 40, 120, 120], "score": 0.9}
    person = {"bbox": [159, 19, 131, 176], "score": 0.8}
    (tmp_path / "ids.json").write_text(json.dumps([{**dog, "image_id": 1, "category_id": 8},
                                                    {**person, "image_id": 1, "category_id": 15}]))
    (tmp_path / "names.json").write_text(json.dumps([{**dog, "image_id": "000005", "category_id": "cat"},
                                                      {**person, "image_id": "000005.jpg", "category_id": "person"}]))
    rows = evaluate(["results=[" + f"{tmp_path / 'ids.json'},{tmp_path / 'names.json'}" + "]", *voc], tmp_path / "eval")
    assert rows[0]["AP50"] == pytest.approx(1.0) and rows[1]["AP50"] == pytest.approx(1.0)
    assert rows[0]["VOC07"] == pytest.approx(1.0) and rows[0]["images_per_second"] is None
    (tmp_path / "bad.json").write_text(json.dumps([{**dog, "image_id": "000009", "category_id": "cat"}]))
    from detector.errors import DatasetError

    with pytest.raises(DatasetError, match=r"bad\.json: detection 0 has image_id '000009'"):
        evaluate([f"results=[{tmp_path / 'bad.json'}]", *voc], tmp_path / "eval2")
    (tmp_path / "bad2.json").write_text(json.dumps([{**dog, "image_id": 1, "category_id": "zebra"}]))
    with pytest.raises(DatasetError, match=r"bad2\.json: detection 0 has category_id 'zebra'.*cat"):
        evaluate([f"results=[{tmp_path / 'bad2.json'}]", *voc], tmp_path / "eval3")


def test_generated_set_in_every_format_trains(tmp_path):
    from detector.cli import convert as convert_dataset

    syn = ["dataset=synthetic", f"dataset.root={tmp_path / 'syn'}", "dataset.train.num_images=4",
           "dataset.val.num_images=2", "dataset.generator.min_image_size=96", "dataset.generator.max_image_size=128"]
    for fmt in ("coco", "yolo", "voc"):
        convert_dataset.convert(compose_config("convert", [*syn, f"to={fmt}", f"output={tmp_path / fmt}"]))
    formats = {
        "coco": ["dataset=coco_json", *(f"dataset.{s}.{k}={tmp_path / 'coco' / s / v}" for s in ("train", "val")
                 for k, v in (("images", "images"), ("annotations", "annotations.json")))],
        "yolo": ["dataset=yolo", f"dataset.data={tmp_path / 'yolo' / 'data.yaml'}"],
        "voc": ["dataset=voc", f"dataset.root={tmp_path / 'voc'}", "dataset.class_names=from_xml",
                "dataset.train.sets=[2007/train]", "dataset.val.sets=[2007/val]"],
    }
    for fmt, overrides in formats.items():
        metrics = train(overrides, tmp_path / f"run_{fmt}")
        assert "AP50" in metrics, fmt
