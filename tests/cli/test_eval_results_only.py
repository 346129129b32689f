"""tools/eval.py on results files: every statistic pycocotools computes reaches the user, VOC AP at
chosen IoUs, no image needed to score a results file, and an id space shifted by one is refused."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import FORMATS, compose_config, run_in_process
from detector.errors import ConfigError, DatasetError

GT = FORMATS / "coco_small" / "gt_dataset.json"
DT = FORMATS / "coco_small" / "dt_dataset.json"


def evaluate(tmp_path, overrides):
    from detector.cli import eval as eval_tool

    return eval_tool.evaluate(compose_config("eval", [
        "dataset=coco_json", f"dataset.val.annotations={GT}", "dataset.train.images=x", "dataset.train.annotations=x",
        "progress=false", "device=cpu", f"output_dir={tmp_path / 'out'}", *overrides]))


def _pycocotools_stats():
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT))
        e = COCOeval(gt, gt.loadRes(str(DT)), iouType="bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def test_all_twelve_coco_statistics_reach_metrics_comparison_and_table(tmp_path):
    rows = evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{DT}]"])
    stats = _pycocotools_stats()
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    (folder,) = (tmp_path / "out").glob("0_*")
    written = json.loads((folder / "metrics.json").read_text())
    compared = json.loads((tmp_path / "out" / "comparison.json").read_text())[0]
    for key, expected in zip(keys, stats):
        expected = None if expected < 0 else float(expected)
        for source in (rows[0], written, compared):
            value = source[key]
            assert (value is None or value != value) if expected is None else value == pytest.approx(expected, abs=1e-12), key
    assert 0 < rows[0]["AR100"] < 1  # imperfect detections: not a trivial comparison
    assert "AR100" in (tmp_path / "out" / "comparison.md").read_text()


def test_voc_ap_at_chosen_ious(tmp_path):
    """One box of each class at IoU 0.6 with its object: a hit at 0.5, a miss at 0.75 (worked by hand)."""
    gt = json.loads(GT.read_text())
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        # Widen by a quarter of the width on the right: IoU = w / (1.25 w) = 0.8 ... make it 0.6:
        # a box of width w / 0.6 that starts at x contains the object: IoU = w h / (w / 0.6 * h) = 0.6.
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": [x, y, w / 0.6, h], "score": 0.9})
    (tmp_path / "r.json").write_text(json.dumps(results))
    rows = evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{tmp_path / 'r.json'}]",
                               "voc_iou=[0.5,0.75]"])
    assert rows[0]["VOC_mAP50"] == pytest.approx(1.0) and rows[0]["VOC_mAP75"] == pytest.approx(0.0)
    with pytest.raises(ConfigError, match=r"voc_iou.*between 0 and 1"):
        evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{DT}]", "voc_iou=[1.5]"])
    with pytest.raises(ConfigError, match=r"^amp must be auto, off, bf16 or fp16, got 'fast'$"):
        evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{DT}]", "amp=fast",
                            f"output_dir={tmp_path / 'amp'}"])
    assert not (tmp_path / "amp" / "comparison.json").exists()  # stopped before scoring anything


def test_a_results_file_is_scored_without_any_image(tmp_path):
    """Scoring detections needs the annotation file only: no images folder, or one that does not exist."""
    with_images = evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{DT}]"])
    for images in ("null", str(tmp_path / "nowhere")):
        rows = evaluate(tmp_path, [f"dataset.val.images={images}", f"results=[{DT}]", f"output_dir={tmp_path / images[-4:]}"])
        assert rows[0]["AP"] == pytest.approx(with_images[0]["AP"], abs=1e-12)


def test_results_only_through_the_command_line_without_images(tmp_path, capsys):
    r = run_in_process("eval", [f"results=[{DT}]", "dataset=coco_json", f"dataset.val.annotations={GT}",
                                f"output_dir={tmp_path / 'cli'}"], tmp_path, capsys)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cli" / "comparison.json").is_file()


def test_image_ids_shifted_by_one_are_refused(tmp_path):
    detections = json.loads(DT.read_text())
    shifted = [{**d, "image_id": d["image_id"] - 1} for d in detections]  # a 0-based export of a 1-based set
    (tmp_path / "shifted.json").write_text(json.dumps(shifted))
    with pytest.raises(DatasetError, match=r"shifted\.json: .*image ids look shifted by one"):
        evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{tmp_path / 'shifted.json'}]"])
    unknown = [*detections, {**detections[0], "image_id": 99}]  # one stray id: the ordinary error
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    with pytest.raises(DatasetError, match=r"unknown\.json: detection 9 has image_id 99"):
        evaluate(tmp_path, [f"dataset.val.images={FORMATS / 'coco_small'}", f"results=[{tmp_path / 'unknown.json'}]"])
