"""Tests for detector.evaluation.coco_evaluator: known-answer AP cases, pycocotools cross-check.

Shape shorthand:
    N: number of images
    D: number of detections in one image
    K: number of foreground classes (labels 1..K)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import FORMATS
from detector.errors import DatasetError
from detector.evaluation import (
    COCO_KEYS,
    METRIC_KEYS,
    COCOEvaluator,
    evaluate_coco,
    predictions_to_coco_results,
)

FIXTURE_DIR = FORMATS / "coco_small"

# Non-contiguous category ids on purpose: label 1 -> category 3, label 2 -> category 7.
LABEL_TO_CAT_ID = {1: 3, 2: 7}

# image id -> list of (category id, xywh box). Areas cover all three COCO ranges:
# small < 32^2 = 1024 <= medium < 96^2 = 9216 <= large.
GT = {
    10: [(3, [10.0, 10.0, 20.0, 20.0]), (7, [50.0, 50.0, 60.0, 60.0])],  # small 400, medium 3600
    20: [(3, [20.0, 30.0, 120.0, 110.0])],  # large 13200
    30: [(7, [5.0, 5.0, 25.0, 25.0]), (3, [100.0, 100.0, 50.0, 40.0])],  # small 625, medium 2000
}


def _write_gt(path: Path, gt: dict[int, list] = GT) -> COCO:
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in gt]
    annotations = []
    for image_id, objs in gt.items():
        for cat_id, (x, y, w, h) in objs:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture
def coco_gt(tmp_path: Path) -> COCO:
    return _write_gt(tmp_path / "gt.json")


def _predictions(shift_frac: float = 0.0, swap_labels: bool = False) -> dict[int, dict]:
    """GT boxes as detections (score 1), optionally shifted right by ``shift_frac`` of the width."""
    cat_to_label = {c: label for label, c in LABEL_TO_CAT_ID.items()}
    preds = {}
    for image_id, objs in GT.items():
        boxes, labels = [], []
        for cat_id, (x, y, w, h) in objs:
            dx = shift_frac * w
            boxes.append([x + dx, y, x + dx + w, y + h])
            label = cat_to_label[cat_id]
            labels.append(3 - label if swap_labels else label)
        preds[image_id] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.ones(len(boxes), dtype=torch.float32),
        }
    return preds


def _evaluate(coco_gt: COCO, preds: dict[int, dict]) -> dict[str, float]:
    return evaluate_coco(coco_gt, predictions_to_coco_results(preds, LABEL_TO_CAT_ID))


def test_label_to_category_mapping_and_xywh() -> None:
    preds = {
        5: {
            "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.5, 0.5, 1.5, 3.5]]),
            "labels": torch.tensor([1, 2]),
            "scores": torch.tensor([0.9, 0.25]),
        }
    }
    results = predictions_to_coco_results(preds, LABEL_TO_CAT_ID)
    assert results == [
        {
            "image_id": 5,
            "category_id": 3,
            "bbox": [1.0, 2.0, 10.0, 20.0],
            "score": pytest.approx(0.9),  # float32 0.9 is not python's 0.9
        },
        {"image_id": 5, "category_id": 7, "bbox": [0.5, 0.5, 1.0, 3.0], "score": 0.25},
    ]
    # Plain python types, so json.dumps works without a custom encoder.
    assert all(type(v) in (int, float, list) for r in results for v in r.values())
    json.dumps(results)


def test_unknown_label_raises_one_line_dataset_error() -> None:
    preds = {1: {"boxes": torch.zeros(1, 4), "labels": torch.tensor([9]), "scores": torch.ones(1)}}
    with pytest.raises(DatasetError) as err:
        predictions_to_coco_results(preds, LABEL_TO_CAT_ID)
    assert "\n" not in str(err.value) and "9" in str(err.value)


def test_perfect_detections_score_one(coco_gt: COCO) -> None:
    metrics = _evaluate(coco_gt, _predictions())
    assert set(metrics) == set(COCO_KEYS)  # the six AP and the six AR statistics
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(1.0), key


def test_iou_0625_passes_050_to_060_only(coco_gt: COCO) -> None:
    # Shifting a box by s of its width gives IoU (1 - s) / (1 + s); s = 0.375 / 1.625 -> IoU 0.625,
    # which clears the thresholds 0.50, 0.55, 0.60 and fails the other seven of 0.50:0.95.
    metrics = _evaluate(coco_gt, _predictions(shift_frac=0.375 / 1.625))
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AP"] == pytest.approx(0.3)


def test_wrong_labels_score_zero(coco_gt: COCO) -> None:
    metrics = _evaluate(coco_gt, _predictions(swap_labels=True))
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(0.0), key


def test_empty_results_score_zero_without_crash(coco_gt: COCO) -> None:
    metrics = evaluate_coco(coco_gt, [])
    assert {k: metrics[k] for k in METRIC_KEYS} == {key: 0.0 for key in METRIC_KEYS}


def test_img_ids_restrict_the_evaluation_to_those_images(coco_gt: COCO, capsys) -> None:
    # Detections for image 20 only: over every image, the objects of 10 and 30 are misses; restricted
    # to image 20 (one large "cat"), AP is 1 and the other area ranges and "dog" have no ground truth.
    results = predictions_to_coco_results({20: _predictions()[20]}, LABEL_TO_CAT_ID)
    everything = evaluate_coco(coco_gt, results)
    assert everything["AP"] < 0.5
    only = evaluate_coco(coco_gt, results, img_ids=[20], verbose=True)
    assert only["AP"] == pytest.approx(1.0) and only["APl"] == pytest.approx(1.0)
    assert math.isnan(only["APs"]) and math.isnan(only["APm"])
    assert "Average Precision" in capsys.readouterr().out
    assert evaluate_coco(coco_gt, [], img_ids=[20])["AP"] == 0.0


def test_area_range_without_gt_is_nan(tmp_path: Path) -> None:
    coco_gt = _write_gt(tmp_path / "large_only.json", {20: GT[20]})
    preds = {20: _predictions()[20]}
    metrics = evaluate_coco(coco_gt, predictions_to_coco_results(preds, LABEL_TO_CAT_ID))
    assert metrics["AP"] == pytest.approx(1.0) and metrics["APl"] == pytest.approx(1.0)
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["APm"])


def test_verbose_prints_summary_and_quiet_prints_nothing(coco_gt: COCO, capsys) -> None:
    results = predictions_to_coco_results(_predictions(), LABEL_TO_CAT_ID)
    evaluate_coco(coco_gt, results)
    assert capsys.readouterr().out == ""
    evaluate_coco(coco_gt, results, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12 and lines[0].startswith(" Average Precision")


def test_foreign_image_id_raises_dataset_error(coco_gt: COCO) -> None:
    results = [{"image_id": 999, "category_id": 3, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 1.0}]
    with pytest.raises(DatasetError, match="999"):
        evaluate_coco(coco_gt, results)


def test_foreign_image_ids_are_named_in_one_line_up_to_five(coco_gt: COCO) -> None:
    def results(ids):
        return [{"image_id": i, "category_id": 3, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 1.0} for i in ids]

    with pytest.raises(DatasetError) as error:
        evaluate_coco(coco_gt, results([10, 105, 101, 102, 103, 104]))
    assert str(error.value) == (
        "detections refer to 5 image id(s) not in the ground truth (101, 102, 103, 104, 105); "
        "were they made on a different annotation file?"
    )
    with pytest.raises(DatasetError) as error:
        evaluate_coco(coco_gt, results([106, 101, 102, 103, 104, 105]))
    assert "(101, 102, 103, 104, 105, ...);" in str(error.value)


def test_results_from_plain_lists_and_the_two_one_line_errors() -> None:
    preds = {5: {"boxes": [[1.0, 2.0, 4.0, 8.0]], "labels": [2], "scores": [0.5]}}
    assert predictions_to_coco_results(preds, LABEL_TO_CAT_ID) == [
        {"image_id": 5, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}
    ]
    with pytest.raises(DatasetError) as error:
        predictions_to_coco_results({5: {"boxes": [[1.0, 2.0, 4.0, 8.0]], "labels": [3], "scores": [0.5]}},
                                    LABEL_TO_CAT_ID)
    assert str(error.value) == (
        "model predicted label 3 but the dataset maps only labels [1, 2] to COCO categories; "
        "does the model's num_classes match the dataset?"
    )
    with pytest.raises(AssertionError, match="^boxes/labels/scores length mismatch$"):
        predictions_to_coco_results({5: {"boxes": [[1.0, 2.0, 4.0, 8.0]], "labels": [], "scores": [0.5]}},
                                    LABEL_TO_CAT_ID)


@pytest.mark.parametrize("flag", ["ignore", "difficult"])
def test_ignore_and_difficult_objects_are_neither_misses_nor_false_positives(tmp_path: Path, flag: str) -> None:
    # Image 10's "dog" is flagged: missing it costs nothing, and neither does a detection on it.
    coco_gt = _write_gt(tmp_path / "gt.json")
    for ann in coco_gt.dataset["annotations"]:
        if ann["image_id"] == 10 and ann["category_id"] == 7:
            ann[flag] = 1
    coco_gt.createIndex()
    preds = _predictions()
    missing = {i: {k: v[:1] if i == 10 else v for k, v in p.items()} for i, p in preds.items()}
    results = predictions_to_coco_results(missing, LABEL_TO_CAT_ID)
    assert evaluate_coco(coco_gt, results)["AP"] == pytest.approx(1.0)
    # a flagged box that is detected is not a false positive either (all of it, and at score 0.1)
    low = predictions_to_coco_results(preds, LABEL_TO_CAT_ID)
    for r in low:
        if r["image_id"] == 10 and r["category_id"] == 7:
            r["score"] = 0.1
    assert evaluate_coco(coco_gt, low)["AP"] == pytest.approx(1.0)
    # and evaluating does not wear the flags off: a second evaluation of the same ground truth agrees
    assert evaluate_coco(coco_gt, results)["AP"] == pytest.approx(1.0)
    assert sum(a.get(flag, 0) for a in coco_gt.dataset["annotations"]) == 1
    # without the flag the same detections miss an object
    for ann in coco_gt.dataset["annotations"]:
        ann.pop(flag, None)
    coco_gt.createIndex()
    assert evaluate_coco(coco_gt, results)["AP"] < 0.9


def test_sharded_evaluation_gathers_every_ranks_images(coco_gt: COCO, tmp_path: Path) -> None:
    preds = _predictions()
    whole = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    whole.process([{"image_id": i} for i in preds], list(preds.values()))
    expected = whole.evaluate()
    other_rank = {30: preds[30]}  # what the other rank processed, as all_gather_objects returns it
    seen = []

    def gather(obj):
        seen.append(obj)
        return [obj, other_rank]

    shard = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID, gather=gather, output_dir=tmp_path)
    assert shard.summary == "" and shard.results == [] and shard.coco_eval is None
    shard.process([{"image_id": 10}, {"image_id": 20}], [preds[10], preds[20]])
    got = shard.evaluate()
    assert set(seen[0]) == {10, 20}
    assert got == expected and got["num_images"] == 3
    assert shard.results == _strict_json(tmp_path / "coco_results.json") and len(shard.results) == 5
    assert shard.coco_eval is not None and shard.summary == whole.summary


def test_nothing_processed_is_nan_everywhere_and_reset_forgets(coco_gt: COCO) -> None:
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    got = evaluator.evaluate()
    assert all(math.isnan(got[k]) for k in COCO_KEYS) and got["num_images"] == 0 and got["num_detections"] == 0
    assert evaluator.summary == "" and evaluator.results == [] and evaluator.coco_eval is None
    evaluator.process([{"image_id": 10}], [_predictions()[10]])
    evaluator.evaluate()
    assert evaluator.summary and evaluator.results and evaluator.coco_eval is not None
    evaluator.reset()
    assert evaluator.summary == "" and evaluator.results == [] and evaluator.coco_eval is None
    assert evaluator.evaluate()["num_images"] == 0
    with pytest.raises(AssertionError, match="^one output per target expected$"):
        evaluator.process([{"image_id": 10}], [])
    # outputs as plain lists (not tensors) are taken as they are
    evaluator.process([{"image_id": 20}], [{"boxes": [[20.0, 30.0, 140.0, 140.0]], "labels": [1], "scores": [0.5]}])
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)


def _strict_json(path: Path):
    def reject(token: str):
        raise ValueError(f"non-standard JSON token {token} in {path}")

    return json.loads(path.read_text(), parse_constant=reject)


def test_evaluator_writes_metrics_and_results(coco_gt: COCO, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID, output_dir=out_dir)
    preds = _predictions()
    ids = sorted(preds)
    # Two batches, as a loader would deliver them; image_id as a 0-d tensor, as collate may give.
    for batch in (ids[:2], ids[2:]):
        evaluator.process([{"image_id": torch.tensor(i)} for i in batch], [preds[i] for i in batch])
    metrics = evaluator.evaluate()

    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["num_images"] == 3 and metrics["num_detections"] == 5
    assert evaluator.summary.count("\n") == 12

    saved = _strict_json(out_dir / "metrics.json")
    assert set(saved) == set(COCO_KEYS) | {"num_images", "num_detections"}
    assert saved["AP"] == pytest.approx(1.0)
    results = _strict_json(out_dir / "coco_results.json")
    assert len(results) == 5
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert {r["category_id"] for r in results} == {3, 7}
    # The results file is loadable by pycocotools as-is.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.loadRes(str(out_dir / "coco_results.json"))


def test_evaluator_scores_only_processed_images_and_resets(coco_gt: COCO) -> None:
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    preds = _predictions()
    evaluator.process([{"image_id": 10}, {"image_id": 20}], [preds[10], preds[20]])
    # Image 30 was never seen, so its objects must not count as misses.
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0)

    evaluator.reset()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    evaluator.process([{"image_id": 10}], [empty])
    metrics = evaluator.evaluate()
    assert metrics["num_images"] == 1 and metrics["num_detections"] == 0
    assert metrics["AP"] == 0.0


def test_evaluator_nan_is_null_in_metrics_json(tmp_path: Path) -> None:
    coco_gt = _write_gt(tmp_path / "large_only.json", {20: GT[20]})
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID, output_dir=tmp_path)
    evaluator.process([{"image_id": 20}], [_predictions()[20]])
    assert math.isnan(evaluator.evaluate()["APs"])
    saved = _strict_json(tmp_path / "metrics.json")
    assert saved["APs"] is None and saved["APl"] == pytest.approx(1.0)


def test_matches_direct_pycocotools_on_real_fixture() -> None:
    gt_file, dt_file = FIXTURE_DIR / "gt_dataset.json", FIXTURE_DIR / "dt_dataset.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        reference = COCOeval(coco_gt, coco_gt.loadRes(str(dt_file)), iouType="bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
        ours = evaluate_coco(COCO(str(gt_file)), json.loads(dt_file.read_text()))

    for key, expected in zip(COCO_KEYS, reference.stats[:12]):
        if expected < 0:  # pycocotools' "no ground truth in this range"
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(float(expected), abs=1e-12), key
    # The fixture has real, imperfect detections: guard against comparing two trivial results.
    assert 0.0 < ours["AP"] < 1.0
