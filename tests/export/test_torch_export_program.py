"""The torch.export program of the model gives its eager detections on images of several sizes (each
operator family, the seed's modes), a fixed-size program refuses other sizes, Fast R-CNN is refused."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from detector.export import SinglePicture, export_detector
from detector.exported import ExportedPredictor
from export_helpers import assert_same_detections, eager, images, model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("overrides", [
    ["model/pooler=roi_align", "model.pooler.reduction=max", "model.pooler.sample_layout=interior",
     "model.pooler.sampling_ratio=-1"],
    ["model/pooler=roi_pool", "model.pooler.quantization=round"],
    ["model/pooler=roi_warp"],
], ids=["roi_align-max-interior-adaptive", "roi_pool-round", "roi_warp"])
def test_torch_export_program_equals_eager_on_any_size(overrides):
    detector_model = model(overrides)
    height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
    with torch.no_grad():
        program = torch.export.export(SinglePicture(detector_model), (images()[0],), dynamic_shapes=({1: height, 2: width},),
                                      strict=False).module()
    for image in images():
        with torch.no_grad():
            boxes, scores, labels = program(image)
        assert boxes.shape == (detector_model.roi_heads.detections_per_img, 4)  # fixed rows, padding has label 0
        real = labels > 0
        assert_same_detections({"boxes": boxes[real], "scores": scores[real], "labels": labels[real]},
                               eager(detector_model, image), box_tol=1e-4, score_tol=1e-6)


def test_a_fixed_size_program_refuses_another_size_in_one_line(tmp_path):
    detector_model = model(["model/pooler=roi_align"])
    path = export_detector(detector_model, tmp_path / "fixed.pt2", format="torch_export", class_names=["a", "b", "c"],
                           example_size=(120, 160), dynamic=False)
    predictor = ExportedPredictor(path)
    assert_same_detections(predictor.run(images()[0]), eager(detector_model, images()[0]), box_tol=1e-4, score_tol=1e-6)
    with pytest.raises(Exception, match=r"photo.png is 97 x 203 pixels; fixed.pt2 was exported for 120 x 160 images only"):
        predictor.run(images()[1], name="photo.png")


def test_a_fast_rcnn_model_is_refused_in_one_line(tmp_path):
    from detector.errors import ConfigError

    fast_rcnn = tiny_model(3, ["model=fast_rcnn_vgg16"])
    with pytest.raises(ConfigError, match=r"Fast R-CNN model \(rpn=None\) takes its proposals from a file"):
        export_detector(fast_rcnn, tmp_path / "m.onnx", format="onnx", class_names=["a", "b", "c"], example_size=(120, 160))
    assert not list(tmp_path.iterdir())  # nothing written
