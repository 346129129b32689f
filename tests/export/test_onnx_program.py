"""The ONNX file of the model, run by onnxruntime, gives its eager detections on images of several sizes."""

from __future__ import annotations

import json

import pytest

from detector.export import export_detector
from detector.exported import ExportedPredictor
from export_helpers import assert_same_detections, eager, images, model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("overrides", [["model/pooler=roi_align"], ["model/pooler=roi_pool", "model.pooler.quantization=floor"]],
                         ids=["roi_align", "roi_pool-floor"])
def test_onnx_in_onnxruntime_equals_eager_on_any_size(overrides, tmp_path):
    detector_model = model(overrides)
    path = export_detector(detector_model, tmp_path / "model.onnx", format="onnx", class_names=["a", "b", "c"],
                           example_size=(120, 160))
    described = json.loads((tmp_path / "model.json").read_text())
    assert described["class_names"] == ["a", "b", "c"] and described["input"]["name"] == "image"
    predictor = ExportedPredictor(path)
    for image in images():
        # onnxruntime's bilinear resize differs from torch's by ~1e-5 of a pixel value: boxes move by less
        # than 1e-3 px and scores by less than 1e-4.
        assert_same_detections(predictor.run(image), eager(detector_model, image))


