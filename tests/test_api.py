"""The Python API: detector.train / evaluate / load + predict, as a user of torchvision or ultralytics
would call them, on a checkpoint trained here."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import detector
from detector.errors import ConfigError, DatasetError
from conftest import TINY_MODEL

pytestmark = pytest.mark.slow

DATA = ["dataset.train.num_images=4", "dataset.val.num_images=2", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    out = tmp / "run"
    metrics = detector.train(f"dataset.root={tmp / 'data'}", *DATA, *TINY_MODEL, "solver.max_iter=2",
                             "solver.ims_per_batch=2", "solver.warmup_iters=1", "num_workers=0", "progress=false",
                             "device=cpu", f"output_dir={out}")
    return tmp, out, metrics


def test_train_from_python_writes_the_run_the_command_writes(run):
    _, out, metrics = run
    for name in ("model_final.pth", "metrics.json", "config.yaml", "train.log"):
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())  # NaN is written as null
    assert metrics == pytest.approx({k: float("nan") if written[k] is None else written[k] for k in metrics},
                                    nan_ok=True)
    assert "val AP=" in (out / "train.log").read_text()
    assert re.search(r"iter \d+/\d+ .*loss", (out / "train.log").read_text())  # the loop's INFO lines too


def test_a_finished_run_is_refused_untouched_from_python_too(run):
    _, out, _ = run
    before = (out / "train.log").read_text()
    with pytest.raises(ConfigError, match="resume=true"):
        detector.train(f"output_dir={out}")
    assert (out / "train.log").read_text() == before


def test_load_and_predict_on_every_kind_of_image(run, tmp_path):
    tmp, out, _ = run
    model = detector.load(out / "model_final.pth", device="cpu")
    gen = np.random.default_rng(0)
    pixels = gen.integers(0, 256, size=(100, 140, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    kinds = [str(tmp_path / "photo.png"), tmp_path / "photo.png", Image.fromarray(pixels), pixels,
             pixels.astype(np.float32) / 255.0, torch.from_numpy(pixels).permute(2, 0, 1)]
    # One image per forward, as the reference below: a batch pads and convolves several images at once,
    # which moves an untrained model's near-tied scores across the top-100 cut (seen on one CPU).
    results = model.predict(kinds, batch_size=1)
    assert len(results) == len(kinds)
    # The reference: the model itself on the [0, 1] float tensor, as torchvision's detectors take it.
    with torch.no_grad():
        (expected,) = model.model([torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0])
    assert len(expected["boxes"]) > 0  # an untrained detector still proposes boxes at score >= 0
    order = torch.argsort(expected["scores"], descending=True, stable=True)  # ties: the model's order
    for r in results:
        torch.testing.assert_close(r["boxes"], expected["boxes"][order])
        torch.testing.assert_close(r["scores"], expected["scores"][order])
        assert r["class_names"] == [model.class_names[int(i) - 1] for i in r["labels"]]
    # The default batches images: one result per image, highest score first, about as many boxes.
    batched = model.predict(kinds)
    assert len(batched) == len(kinds)
    for r in batched:
        assert bool((r["scores"][:-1] >= r["scores"][1:]).all())
        assert abs(len(r["boxes"]) - len(expected["boxes"])) <= max(1, len(expected["boxes"]) // 100)
    # Boxes are in the image's own pixels (100 x 140), not the model's resized input.
    assert float(results[0]["boxes"][:, 2].max()) <= 140 and float(results[0]["boxes"][:, 3].max()) <= 100
    (high,) = model.predict(pixels, score_thresh=float(expected["scores"].max()))
    assert len(high["boxes"]) == int((expected["scores"] >= expected["scores"].max()).sum())


def test_load_at_another_test_size(run):
    _, out, _ = run
    own, one = detector.load(out / "model_final.pth", device="cpu"), detector.load(out / "model_final.pth", device="cpu", test_scale=1.0)
    t = own.model.transform
    assert t.test_scale != 1.0 and one.model.transform.test_scale == 1.0
    image = torch.rand(3, 100, 140)
    assert t.target_size(100, 140) != one.model.transform.target_size(100, 140)
    tested = one.model.transform.target_size(100, 140)
    assert tested == one.model.transform.train().target_size(100, 140)  # 1.0: the training size
    one.model.transform.eval()
    with pytest.raises(ConfigError, match="test_scale must be a number"):
        detector.load(out / "model_final.pth", device="cpu", test_scale=0)
    assert len(one.predict(image)) == 1


def test_bad_images_are_one_clear_error(run):
    _, out, _ = run
    model = detector.load(out / "model_final.pth", device="cpu")
    with pytest.raises(DatasetError, match=r"\[3, H, W\]"):
        model.predict(torch.zeros(1, 3, 8, 8))
    with pytest.raises(DatasetError, match="divide by 255"):
        model.predict(np.full((8, 8, 3), 200.0, dtype=np.float32))
    with pytest.raises(DatasetError, match="image file not found"):
        model.predict("no_such_photo.jpg")


def test_evaluate_from_python_reproduces_the_runs_metrics(run):
    tmp, out, metrics = run
    rows = detector.evaluate(f"checkpoints=[{out / 'model_final.pth'}]", f"output_dir={tmp / 'eval'}",
                             "progress=false", "num_workers=0", "device=cpu")
    assert len(rows) == 1 and (tmp / "eval" / "eval.log").is_file()
    for key in ("AP", "AP50"):
        assert rows[0][key] == pytest.approx(metrics[key], abs=1e-9, nan_ok=True)
