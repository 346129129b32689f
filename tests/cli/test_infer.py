"""tools/infer.py in-process: file, folder and glob inputs, drawings and JSON, class names from the checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import TINY_MODEL, compose_config, tiny_model
from detector.engine.state import TrainState
from detector.engine import save_checkpoint
from detector.errors import DatasetError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = compose_config("train", TINY_MODEL)
    model = tiny_model(class_names=["cat", "dog"])
    # A model that fires everywhere: class "dog" with high scores, so there is something to draw.
    with torch.no_grad():
        model.roi_heads.predictor.cls_score.bias.copy_(torch.tensor([-5.0, -5.0, 5.0]))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return save_checkpoint(tmp / "model_final.pth", TrainState(model=model, iteration=1), config=resolved,
                           extra={"dataset": {"class_names": ["cat", "dog"]}})


def run(checkpoint, tmp_path, input, **extra):
    from detector.cli import infer

    cfg = OmegaConf.create({"checkpoint": str(checkpoint), "input": str(input), "output_dir": str(tmp_path / "out"),
                            "score_thresh": 0.5, "device": "cpu", "batch_size": 2, "progress": False, **extra})
    return infer.infer(cfg)


def test_folder_with_odd_modes_writes_drawings_and_json(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (96, 64), (100, 120, 140)).save(photos / "a.jpg")
    Image.new("L", (80, 64), 90).save(photos / "b.png")
    Image.new("RGBA", (64, 80), (9, 9, 9, 0)).save(photos / "c.png")
    Image.new("I;16", (64, 64), 30000).save(photos / "d.tif")
    (photos / "notes.txt").write_text("not an image")
    records = run(checkpoint, tmp_path, photos)
    assert [r["output"] for r in records] == ["a.jpg", "b.png", "c.png", "d.png"]
    saved = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert saved == records and (saved[2]["width"], saved[2]["height"]) == (64, 80)
    for r in records:
        assert Image.open(tmp_path / "out" / r["output"]).size == (r["width"], r["height"])
        for d in r["detections"]:
            assert d["class_name"] == "dog" and d["score"] >= 0.5 and len(d["box"]) == 4


def test_glob_and_single_file_and_threshold(checkpoint, tmp_path):
    for name in ("x.jpg", "y.jpg"):
        Image.new("RGB", (64, 64)).save(tmp_path / name)
    assert len(run(checkpoint, tmp_path, tmp_path / "*.jpg")) == 2
    records = run(checkpoint, tmp_path, tmp_path / "x.jpg", score_thresh=1.0)
    assert len(records) == 1 and all(d["score"] >= 1.0 for d in records[0]["detections"])


def test_missing_input_is_one_line(checkpoint, tmp_path):
    with pytest.raises(DatasetError, match=r"input=.*nothing: no such file or folder"):
        run(checkpoint, tmp_path, tmp_path / "nothing")


def test_an_output_folder_holding_the_inputs_is_refused_before_writing(checkpoint, tmp_path):
    from detector.errors import ConfigError

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(photos / "a.jpg")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(photos / "b.png")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    for input in (photos, photos / "a.jpg", photos / "*.png"):
        with pytest.raises(ConfigError, match=r"would overwrite the input image .*photos/(a\.jpg|b\.png)"):
            run(checkpoint, tmp_path, input, output_dir=str(photos))
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before  # nothing written, nothing lost
    run(checkpoint, tmp_path, photos, output_dir=str(photos / "drawn"))  # a sub-folder is fine
    assert sorted(p.name for p in (photos / "drawn").iterdir()) == ["a.jpg", "b.png", "detections.json"]
