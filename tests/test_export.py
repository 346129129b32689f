"""Exported programs (torch.export, ONNX in onnxruntime) give the eager model's detections on images of
several sizes, for each operator family; the command line writes and runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL, run_in_process, tiny_model
from detector.export import SinglePicture, export_detector
from detector.exported import ExportedPredictor

pytestmark = pytest.mark.slow

SIZES = [(120, 160), (97, 203), (256, 130)]


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def _model(pooler_overrides):
    torch.manual_seed(0)
    # A low score threshold: dozens of detections per image, so that the comparison is not of empty sets.
    return tiny_model(3, [*pooler_overrides, "model.roi_heads.score_thresh=0.2"]).eval()


def assert_same_detections(got, expected, *, box_tol=1e-3, score_tol=1e-4):
    """Every detection matched one to one: same label, score and box within the tolerances (scores
    that tie or nearly tie may come out in another order)."""
    assert len(got["scores"]) == len(expected["scores"]) > 0
    free = torch.ones(len(got["scores"]), dtype=torch.bool)
    for box, score, label in zip(expected["boxes"], expected["scores"], expected["labels"]):
        close = (free & (got["labels"] == label) & ((got["scores"] - score).abs() <= score_tol)
                 & ((got["boxes"] - box).abs().amax(1) <= box_tol))
        assert close.any(), f"no match for label {int(label)} score {float(score):.6f} box {box.tolist()}"
        free[torch.nonzero(close)[0, 0]] = False


def _eager(model, image):
    with torch.no_grad():
        (out,) = model([image])
    return out


@pytest.mark.parametrize("overrides", [
    ["model/pooler=roi_align", "model.pooler.reduction=max", "model.pooler.sample_layout=interior",
     "model.pooler.sampling_ratio=-1"],
    ["model/pooler=roi_pool", "model.pooler.quantization=floor"],
    ["model/pooler=roi_warp"],
], ids=["roi_align-max-interior-adaptive", "roi_pool-floor", "roi_warp"])
def test_torch_export_program_equals_eager_on_any_size(overrides):
    model = _model(overrides)
    height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
    with torch.no_grad():
        program = torch.export.export(SinglePicture(model), (_images()[0],), dynamic_shapes=({1: height, 2: width},),
                                      strict=False).module()
    for image in _images():
        with torch.no_grad():
            boxes, scores, labels = program(image)
        assert boxes.shape == (model.roi_heads.detections_per_img, 4)  # fixed rows, padding has label 0
        real = labels > 0
        assert_same_detections({"boxes": boxes[real], "scores": scores[real], "labels": labels[real]},
                               _eager(model, image), box_tol=1e-4, score_tol=1e-6)


@pytest.mark.parametrize("overrides", [["model/pooler=roi_align"], ["model/pooler=roi_pool"]], ids=["roi_align", "roi_pool"])
def test_onnx_in_onnxruntime_equals_eager_on_any_size(overrides, tmp_path):
    model = _model(overrides)
    path = export_detector(model, tmp_path / "model.onnx", format="onnx", class_names=["a", "b", "c"],
                           example_size=(120, 160))
    described = json.loads((tmp_path / "model.json").read_text())
    assert described["class_names"] == ["a", "b", "c"] and described["input"]["name"] == "image"
    predictor = ExportedPredictor(path)
    for image in _images():
        # onnxruntime's bilinear resize differs from torch's by ~1e-5 of a pixel value: boxes move by less
        # than 1e-3 px and scores by less than 1e-4.
        assert_same_detections(predictor.run(image), _eager(model, image))


def test_a_fixed_size_program_refuses_another_size_in_one_line(tmp_path):
    model = _model(["model/pooler=roi_align"])
    path = export_detector(model, tmp_path / "fixed.pt2", format="torch_export", class_names=["a", "b", "c"],
                           example_size=(120, 160), dynamic=False)
    predictor = ExportedPredictor(path)
    assert_same_detections(predictor.run(_images()[0]), _eager(model, _images()[0]), box_tol=1e-4, score_tol=1e-6)
    with pytest.raises(Exception, match=r"photo.png is 97 x 203 pixels; fixed.pt2 was exported for 120 x 160 images only"):
        predictor.run(_images()[1], name="photo.png")


def test_export_and_infer_command_lines(tmp_path, capsys):
    import detector
    from PIL import Image

    run = tmp_path / "run"
    detector.train(f"dataset.root={tmp_path / 'data'}", "dataset.train.num_images=4", "dataset.val.num_images=2",
                   "dataset.generator.min_image_size=96", "dataset.generator.max_image_size=128", *TINY_MODEL,
                   "solver.max_iter=2", "solver.ims_per_batch=2", "num_workers=0", "progress=false", "device=cpu",
                   f"output_dir={run}")
    r = run_in_process("export", [f"checkpoint={run / 'model_final.pth'}", "format=torch_export",
                                  f"output={tmp_path / 'm.pt2'}"], tmp_path, capsys)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.pt2").is_file() and (tmp_path / "m.json").is_file()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    outputs = {}
    for source in (f"checkpoint={run / 'model_final.pth'}", f"checkpoint={tmp_path / 'm.pt2'}"):
        name = "model" if source.endswith(".pt2") else "checkpoint"
        r = run_in_process("infer", [source, f"input={tmp_path / 'photo.png'}", f"output_dir={tmp_path / name}",
                                     "score_thresh=0.0", "progress=false", "device=cpu"], tmp_path, capsys)
        assert r.returncode == 0, r.stderr
        outputs[name] = json.loads((tmp_path / name / "detections.json").read_text())[0]["detections"]
    assert len(outputs["model"]) == len(outputs["checkpoint"])
    key = lambda d: (d["label"], -d["score"], d["box"])  # noqa: E731
    for a, b in zip(sorted(outputs["model"], key=key), sorted(outputs["checkpoint"], key=key)):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["box"] == pytest.approx(b["box"], abs=0.011)  # the JSON's 2 decimals
    r = run_in_process("infer", [f"checkpoint={tmp_path / 'nope.onnx'}", f"input={tmp_path / 'photo.png'}"], tmp_path, capsys)
    assert r.returncode == 1 and "nope.onnx: no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_fast_rcnn_model_is_refused_in_one_line(tmp_path):
    from detector.errors import ConfigError

    model = tiny_model(3, ["model=fast_rcnn_vgg16"])
    with pytest.raises(ConfigError, match=r"Fast R-CNN model \(rpn=None\) takes its proposals from a file"):
        export_detector(model, tmp_path / "m.onnx", format="onnx", class_names=["a", "b", "c"], example_size=(120, 160))
    assert not list(tmp_path.iterdir())  # nothing written
