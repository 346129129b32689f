"""tools/export.py writes a program; tools/infer.py runs it with the checkpoint's results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_MODEL, run_in_process

pytestmark = pytest.mark.slow


def test_export_and_infer_command_lines(tmp_path, capsys):
    import detector
    from PIL import Image

    run = tmp_path / "run"
    detector.train(f"dataset.root={tmp_path / 'data'}", "dataset.train.num_images=4", "dataset.val.num_images=2",
                   "dataset.generator.min_image_size=96", "dataset.generator.max_image_size=128", *TINY_MODEL,
                   "solver.max_iter=2", "solver.ims_per_batch=2", "num_workers=0", "progress=false", "device=cpu",
                   f"output_dir={run}")
    # A fixed-size program (the photo's size): the plumbing, at a third of a dynamic export's time.
    r = run_in_process("export", [f"checkpoint={run / 'model_final.pth'}", "format=torch_export",
                                  f"output={tmp_path / 'm.pt2'}", "dynamic=false", "image_size=[90,120]"], tmp_path, capsys)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.pt2").is_file() and (tmp_path / "m.json").is_file()
    assert not (tmp_path / "export.log").exists()  # nothing but the program and its description
    # The description's resize is the exported program's: the test sizes (test_scale x the training sizes).
    import torch

    stored = torch.load(run / "model_final.pth", weights_only=False)["config"]["model"]["transform"]
    resize = json.loads((tmp_path / "m.json").read_text())["resize"]
    assert resize["min_size"] == round(stored["min_size"] * stored["test_scale"]) != stored["min_size"]
    assert resize["max_size"] == round(stored["max_size"] * stored["test_scale"])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    outputs = {}
    for source in (f"checkpoint={run / 'model_final.pth'}", f"checkpoint={tmp_path / 'm.pt2'}"):
        name = "model" if source.endswith(".pt2") else "checkpoint"
        # amp=off: the exported program computes in float32, the checkpoint would follow its run's
        # solver.amp (bf16 on a CPU that has it).
        r = run_in_process("infer", [source, f"input={tmp_path / 'photo.png'}", f"output_dir={tmp_path / name}",
                                     "score_thresh=0.0", "progress=false", "device=cpu", "amp=off"], tmp_path, capsys)
        assert r.returncode == 0, r.stderr
        outputs[name] = json.loads((tmp_path / name / "detections.json").read_text())[0]["detections"]
    assert len(outputs["model"]) == len(outputs["checkpoint"])
    key = lambda d: (d["label"], -d["score"], d["box"])  # noqa: E731
    for a, b in zip(sorted(outputs["model"], key=key), sorted(outputs["checkpoint"], key=key)):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["box"] == pytest.approx(b["box"], abs=0.011)  # the JSON's 2 decimals
    r = run_in_process("infer", [f"checkpoint={tmp_path / 'm.pt2'}", f"input={tmp_path / 'photo.png'}", "amp=bf16",
                                 f"output_dir={tmp_path / 'bf16'}"], tmp_path, capsys)
    assert r.returncode == 1 and "amp=bf16 applies to checkpoints" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_in_process("infer", [f"checkpoint={tmp_path / 'm.pt2'}", f"input={tmp_path / 'photo.png'}", "test_scale=1.0",
                                 f"output_dir={tmp_path / 'scaled'}"], tmp_path, capsys)
    assert r.returncode == 1 and "test_scale applies to checkpoints" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_in_process("infer", [f"checkpoint={run / 'model_final.pth'}", f"input={tmp_path / 'photo.png'}", "test_scale=1.0",
                                 f"output_dir={tmp_path / 'scaled'}", "progress=false", "device=cpu"], tmp_path, capsys)
    assert r.returncode == 0, r.stderr
    r = run_in_process("infer", [f"checkpoint={tmp_path / 'nope.onnx'}", f"input={tmp_path / 'photo.png'}"], tmp_path, capsys)
    assert r.returncode == 1 and "nope.onnx: no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


