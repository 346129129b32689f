"""Tests for detector.evaluation.inference_on_dataset with a fake model and loader.

Shape shorthand:
    N: number of images in a batch
    D: number of detections in one image
    K: number of foreground classes (labels 1..K)
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO
from torch import nn

from detector.evaluation import METRIC_KEYS, COCOEvaluator, inference_on_dataset

LABEL_TO_CAT_ID = {1: 3, 2: 7}
# image id -> (category id, xyxy box); one object per image keeps the fake model trivial.
OBJECTS = {
    1: (3, [10.0, 10.0, 60.0, 50.0]),
    2: (7, [0.0, 0.0, 120.0, 100.0]),
    3: (3, [5.0, 5.0, 15.0, 15.0]),
}


@pytest.fixture
def coco_gt(tmp_path: Path) -> COCO:
    annotations = [
        {
            "id": i,
            "image_id": i,
            "category_id": cat,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": 0,
        }
        for i, (cat, (x1, y1, x2, y2)) in OBJECTS.items()
    ]
    data = {
        "images": [
            {"id": i, "width": 128, "height": 128, "file_name": f"{i}.jpg"} for i in OBJECTS
        ],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


class FakeDetector(nn.Module):
    """Answers each image with the GT box of the image whose id is encoded in its pixel values."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # so .train()/.eval() and devices behave normally
        self.modes_seen: list[bool] = []

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        self.modes_seen.append(self.training)
        cat_to_label = {c: label for label, c in LABEL_TO_CAT_ID.items()}
        outputs = []
        for image in images:
            image_id = int(round(image[0, 0, 0].item() * 10))
            cat, box = OBJECTS[image_id]
            outputs.append(
                {
                    "boxes": torch.tensor([box], device=image.device),
                    "labels": torch.tensor([cat_to_label[cat]], device=image.device),
                    "scores": torch.tensor([0.9], device=image.device),
                }
            )
        return outputs


def _loader(batch_size: int = 2) -> list[tuple[list[torch.Tensor], list[dict]]]:
    ids = sorted(OBJECTS)
    batches = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start : start + batch_size]
        images = [torch.full((3, 128, 128), i / 10.0) for i in chunk]
        targets = [
            {"image_id": i, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)} for i in chunk
        ]
        batches.append((images, targets))
    return batches


def test_inference_scores_and_restores_train_mode(coco_gt: COCO, tmp_path: Path) -> None:
    model = FakeDetector().train()
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID, output_dir=tmp_path)
    metrics = inference_on_dataset(model, _loader(), evaluator, device="cpu", progress=False)

    assert model.training, "train mode must be restored"
    assert model.modes_seen == [False, False], "the model must run in eval mode"
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["num_images"] == 3 and metrics["num_detections"] == 3
    assert metrics["images_per_second"] > 0
    assert "images_per_second" not in METRIC_KEYS
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "coco_results.json").is_file()


def test_inference_keeps_eval_mode_and_resets_evaluator(coco_gt: COCO) -> None:
    model = FakeDetector().eval()
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    # Stale state from an earlier pass (here: on another dataset, image id 99 is not in this
    # ground truth) must not leak into this one; without reset() evaluate() would reject id 99.
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "scores": torch.zeros(0),
    }
    evaluator.process([{"image_id": 99}], [empty])
    metrics = inference_on_dataset(model, _loader(batch_size=3), evaluator, device="cpu")
    assert not model.training
    assert metrics["num_detections"] == 3 and metrics["AP"] == pytest.approx(1.0)


def test_inference_restores_mode_when_model_raises(coco_gt: COCO) -> None:
    class Broken(FakeDetector):
        def forward(self, images):
            raise RuntimeError("boom")

    model = Broken().train()
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    with pytest.raises(RuntimeError, match="boom"):
        inference_on_dataset(model, _loader(), evaluator, device="cpu", progress=False)
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inference_on_cuda_moves_outputs_to_cpu(coco_gt: COCO) -> None:
    model = FakeDetector().to("cuda")
    evaluator = COCOEvaluator(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    metrics = inference_on_dataset(model, _loader(), evaluator, device="cuda", progress=False)
    assert metrics["AP"] == pytest.approx(1.0)
    assert all(v.device.type == "cpu" for p in evaluator._predictions.values() for v in p.values())


def test_inference_runs_the_model_under_the_given_autocast_and_scores_float32(coco_gt: COCO) -> None:
    """amp_dtype: the forward runs under torch.autocast in that dtype (a model's linear layers then
    return bf16), and the evaluator receives float32 boxes and scores whatever the model returned."""

    class Autocasting(FakeDetector):
        def forward(self, images):
            self.autocast_seen = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
            outputs = super().forward(images)
            return [{**o, "boxes": o["boxes"].bfloat16(), "scores": o["scores"].bfloat16()} for o in outputs]

    seen = []

    class Recording(COCOEvaluator):
        def process(self, inputs, outputs):
            seen.extend((o["boxes"].dtype, o["scores"].dtype) for o in outputs)
            super().process(inputs, outputs)

    model = Autocasting()
    evaluator = Recording(coco_gt=coco_gt, label_to_cat_id=LABEL_TO_CAT_ID)
    metrics = inference_on_dataset(model, _loader(), evaluator, device="cpu", progress=False, amp_dtype=torch.bfloat16)
    assert model.autocast_seen == (True, torch.bfloat16)
    assert seen == [(torch.float32, torch.float32)] * 3 and metrics["AP"] == pytest.approx(1.0)
    inference_on_dataset(model, _loader(), evaluator, device="cpu", progress=False)  # the default: float32
    assert model.autocast_seen[0] is False
