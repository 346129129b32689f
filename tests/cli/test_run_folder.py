"""A finished run's folder is kept: a new run into it is refused before anything is written."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT
from detector.engine.state import TrainState
from detector.errors import ConfigError


def _config(out, *overrides):
    from detector.cli import config as config_utils  # noqa: F401  (resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"output_dir={out}", *overrides], return_hydra_config=True)


def test_a_new_run_over_a_finished_one_is_refused_before_hydra_writes(tmp_path, capsys):
    """Hydra rewrites .hydra/*.yaml before the task starts: the callback refuses first."""
    from detector.cli.config import OutputDirCallback

    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)
    (out / "model_final.pth").write_bytes(b"weights")
    (out / ".hydra" / "config.yaml").write_text("the finished run's record")
    cfg = _config(out)
    assert str(cfg.hydra.callbacks.output_dir._target_).endswith("OutputDirCallback")
    with pytest.raises(SystemExit) as exit_info:
        OutputDirCallback(refuse_finished_run=True).on_run_start(config=cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run (model_final.pth)" in err and "resume=true" in err
    assert (out / "model_final.pth").read_bytes() == b"weights"
    assert (out / ".hydra" / "config.yaml").read_text() == "the finished run's record"
    for ok in (["resume=true"], ["resume=auto"], ["overwrite=true"]):  # the user said so: no refusal
        OutputDirCallback(refuse_finished_run=True).on_run_start(config=_config(out, *ok))
    OutputDirCallback(refuse_finished_run=True).on_run_start(config=_config(tmp_path / "fresh"))


def test_train_refuses_in_process_and_in_a_sweep_job(tmp_path):
    """train() itself checks too (a sweep job's folder, a call from Python), before writing anything."""
    from detector.cli import train

    from conftest import compose_config

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"AP": 0.5}')
    cfg = compose_config("train", [f"output_dir={out}", "dataset.root=/nonexistent/never/drawn"])
    with pytest.raises(ConfigError, match=r"already holds a run \(metrics.json\)"):
        train.train(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    with pytest.raises(ConfigError, match="overwrite must be true or false"):
        train.train(compose_config("train", [f"output_dir={out}", "overwrite=maybe"]))


TINY_RUN = ["dataset.train.num_images=4", "dataset.val.num_images=2", "dataset.generator.min_image_size=64",
            "dataset.generator.max_image_size=64", "solver.max_iter=2", "solver.ims_per_batch=2",
            "solver.warmup_iters=1", "num_workers=0", "progress=false", "device=cpu", "checkpoint_period=0"]


def test_sigint_during_the_final_evaluation_is_one_line_exit_130_and_resume_finishes_it(tmp_path, monkeypatch):
    import os
    import signal
    import time

    from detector.cli import train
    from conftest import TINY_MODEL, compose_config
    from detector.engine import TrainingInterrupted

    real = train.inference_on_dataset

    def interrupted(*args, **kwargs):  # Ctrl-C arrives while the final evaluation runs
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        raise AssertionError("the signal did not stop the evaluation")

    out = tmp_path / "run"
    overrides = [*TINY_MODEL, *TINY_RUN, f"dataset.root={tmp_path / 'data'}", f"output_dir={out}"]
    monkeypatch.setattr(train, "inference_on_dataset", interrupted)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run in the background
    with pytest.raises(TrainingInterrupted) as stop:
        train.train(compose_config("train", overrides))
    assert stop.value.exit_code == 130 and "\n" not in str(stop.value)
    assert "SIGINT during the final evaluation" in str(stop.value) and "resume=true" in str(stop.value)
    assert (out / "model_final.pth").is_file() and not (out / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is given back

    # Resuming with other optimizer groups (the backbone's own lr) is one line, and the run is kept.
    with pytest.raises(ConfigError, match="resuming: the checkpoint's optimizer has 2 parameter groups and this run's 4: "
                       "resume with the solver.backbone_lr_factor"):
        train.train(compose_config("train", [*overrides, "resume=true", "solver.backbone_lr_factor=2"]))
    monkeypatch.setattr(train, "inference_on_dataset", real)
    metrics = train.train(compose_config("train", [*overrides, "resume=true"]))
    assert (out / "metrics.json").is_file() and set(metrics) >= {"AP", "AP50"}


def test_errors_and_library_warnings_reach_the_run_log(tmp_path, capsys):
    """The stop line is in the log file as well as on stderr; a dataset's warning is a log line."""
    import logging
    import warnings

    from detector.cli.config import run_cli
    from detector.errors import DatasetError

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        @run_cli
        def task(cfg):
            warnings.warn("x.json: 1 box(es) clipped to the image")
            raise DatasetError("x.json: broken")

        with pytest.raises(SystemExit) as exit_info:
            task(None)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == "error: x.json: broken"
    log = (tmp_path / "train.log").read_text()
    assert "x.json: 1 box(es) clipped to the image" in log and "error: x.json: broken" in log
    assert "warnings.warn" not in log  # no source line of the frame that warned


def test_dump_proposals_writes_no_log_file_in_the_current_folder():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="dump_proposals", overrides=["output=x.pt"], return_hydra_config=True)
    assert "file" not in cfg.hydra.job_logging.handlers and cfg.hydra.job_logging.root.handlers == ["console"]


def test_infer_keeps_its_summary_in_its_log(tmp_path):
    import logging

    import torch
    from omegaconf import OmegaConf
    from PIL import Image

    from detector.cli import infer
    from conftest import TINY_MODEL, compose_config, tiny_model
    from detector.engine import save_checkpoint

    config = OmegaConf.to_container(compose_config("train", TINY_MODEL), resolve=True)
    ckpt = save_checkpoint(tmp_path / "m.pth", TrainState(model=tiny_model(class_names=["a"]), iteration=1), config=config,
                           extra={"dataset": {"class_names": ["a"]}})
    Image.new("RGB", (64, 64)).save(tmp_path / "p.jpg")
    handler = logging.FileHandler(tmp_path / "infer.log")
    logging.getLogger().addHandler(handler)
    try:
        with torch.no_grad():
            infer.infer(OmegaConf.create({"checkpoint": str(ckpt), "input": str(tmp_path / "p.jpg"), "score_thresh": 0.5,
                                          "output_dir": str(tmp_path / "out"), "device": "cpu", "batch_size": 1,
                                          "progress": False}))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert "1 images, " in (tmp_path / "infer.log").read_text()


@pytest.mark.parametrize("tool, args", [
    ("train", []),
    ("infer", ["checkpoint=x.pth", "input=x.jpg"]),
])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, tool, args, capsys):
    """Through the command line (Hydra makes the folder before the task): a path under a file."""
    from conftest import run_in_process

    (tmp_path / "afile").write_text("not a folder")
    r = run_in_process(tool, [f"output_dir={tmp_path / 'afile' / 'run'}", *args], tmp_path, capsys)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: output_dir={tmp_path / 'afile' / 'run'}: cannot write there (Not a directory); choose a folder you "
        f"can write to"]


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """Permission bits do not stop root, so the refusal of the file system is simulated."""
    import tempfile

    from detector.cli.config import OutputDirCallback

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(SystemExit):
        OutputDirCallback().on_run_start(config=_config(tmp_path / "ro"))
    assert capsys.readouterr().err.strip() == (
        f"error: output_dir={tmp_path / 'ro'}: cannot write there (Permission denied); choose a folder you can write to")


@pytest.mark.parametrize("override, pattern", [
    ("model.transform.min_size=0", r"model.transform: min_size must be at least 1 pixel"),
    ("model.transform.max_size=0", r"model.transform: max_size=0 is below min_size"),
    ("solver.momentum=5", r"solver.momentum must be below 1"),
    ("model.rpn.nms_thresh=2", r"model.rpn: nms_thresh is an IoU in \(0, 1\]"),
    ("model.roi_heads.nms_thresh=0", r"model.roi_heads: nms_thresh is an IoU in \(0, 1\]"),
    ("model.roi_heads.score_thresh=1.5", r"model.roi_heads: score_thresh is a probability"),
    ("checkpoint_keep_last=-1", r"checkpoint_keep_last must be >= 0"),
    ("solver.steps=[5000]", r"solver.steps: 5000 is not an iteration of the run \(1..100,"),
])
def test_nonsense_values_are_refused_in_one_line(tmp_path, override, pattern):
    from detector.cli import train

    from conftest import compose_config
    from detector.errors import DetectorError

    cfg = compose_config("train", [override, "solver.max_iter=100", f"output_dir={tmp_path / 'run'}",
                                   f"dataset.root={tmp_path / 'data'}", "dataset.train.num_images=4",
                                   "dataset.val.num_images=2", "dataset.generator.min_image_size=64",
                                   "dataset.generator.max_image_size=64"])
    with pytest.raises(DetectorError, match=pattern) as err:
        train.train(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("detection, pattern", [
    ({"bbox": "191px"}, r"detection 0 has bbox '191px'; expected \[x, y, width, height\]"),
    ({"bbox": [1, 2, 3]}, r"detection 0 has bbox \[1, 2, 3\]"),
    ({"bbox": None}, r"detection 0 has bbox None"),
    ({"bbox": [1, 2, -3, 4]}, r"detection 0 has bbox \[1, 2, -3, 4\]; .*width, height >= 0"),
    ({"bbox": [1, 2, True, 4]}, r"detection 0 has bbox \[1, 2, True, 4\]"),
    ({"score": float("nan")}, r"detection 0 has score nan; expected a finite number"),
    ({"score": "high"}, r"detection 0 has score 'high'"),
])
def test_a_results_file_with_bad_values_is_one_line(tmp_path, detection, pattern):
    import json

    from detector.cli import eval as eval_tool
    from omegaconf import OmegaConf

    from detector.data.synthetic import generate_synthetic_coco
    from detector.errors import DatasetError

    images, annotations = generate_synthetic_coco(tmp_path, split="val", num_images=2, seed=0, min_image_size=64,
                                                  max_image_size=64)
    good = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 10.0, 10.0], "score": 0.5}
    (tmp_path / "r.json").write_text(json.dumps([{**good, **detection}]))
    cfg = OmegaConf.create({
        "checkpoints": [], "results": [str(tmp_path / "r.json")], "voc_protocol": "devkit", "voc_results": False,
        "device": "cpu", "batch_size": 1, "num_workers": 0, "progress": False, "output_dir": str(tmp_path / "out"),
        "dataset": {"val": {"_target_": "detector.data.CocoDetection", "images": str(images),
                            "annotations": str(annotations)}}})
    with pytest.raises(DatasetError, match=r"r\.json: " + pattern) as err:
        eval_tool.evaluate(cfg)
    assert "\n" not in str(err.value)
    for key, value in (("batch_size", 0), ("num_workers", -1)):
        from detector.errors import ConfigError

        with pytest.raises(ConfigError, match=rf"^{key} must be (auto or )?an integer >= "):
            eval_tool.evaluate(OmegaConf.merge(cfg, {key: value}))


def test_cosmetic_messages_say_what_the_file_is(tmp_path, caplog):
    """Random bytes are not 'pickled objects'; a split that is a file is not 'not found'; a resume
    that falls back says which checkpoint was missing."""
    import logging
    import os

    import torch

    from detector.data import YOLODetection
    from detector.engine import find_last_checkpoint, load_checkpoint
    from detector.errors import CheckpointError, DatasetError

    (tmp_path / "random.pth").write_bytes(os.urandom(256).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    with pytest.raises(CheckpointError, match=r"random\.pth is not a PyTorch checkpoint") as err:
        load_checkpoint(tmp_path / "random.pth")
    assert "pickled" not in str(err.value)

    (tmp_path / "images.zip").write_bytes(b"not images")
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images.zip\nval: images.zip\nnames: [a]\n")
    with pytest.raises(DatasetError, match=r"'images.zip' is the file .*neither a folder of images nor a \.txt list"):
        YOLODetection(data=tmp_path / "data.yaml", split="train")

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "iteration": 4}, run / "model_0000004.pth")
    (run / "last_checkpoint").write_text("model_0000008.pth\n")
    with caplog.at_level(logging.WARNING, logger="detector"):
        assert find_last_checkpoint(run, fallback=True) == run / "model_0000004.pth"
    assert any("names model_0000008.pth, which is missing: resuming from model_0000004.pth" in r.message
               for r in caplog.records)


def test_an_unquoted_value_with_a_space_gets_the_quoting_hint(tmp_path, capsys):
    from conftest import run_in_process

    r = run_in_process("train", ["output_dir=my", "runs/a"], tmp_path, capsys)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: 'runs/a' is not a key=value override: if it belongs to output_dir, quote the value, e.g. "
        "output_dir='my runs/a'"]
    assert list(tmp_path.iterdir()) == []


def test_analyze_quantization_command_line(tmp_path, capsys):
    """The analysis through its command (in process): the table by rule and size, its files."""
    from conftest import TINY_MODEL, run_in_process

    r = run_in_process("analyze", [f"dataset.root={tmp_path / 'data'}", "dataset.val.num_images=3",
                                   "dataset.train.num_images=2", *TINY_MODEL, f"output_dir={tmp_path / 'q'}"],
                       tmp_path, capsys)
    assert r.returncode == 0, r.stderr[-2000:]
    for rule in ("round", "floor"):
        assert any(line.startswith(f"| {rule} | all |") for line in r.stdout.splitlines()), r.stdout[-2000:]
    assert any((tmp_path / "q").iterdir())
