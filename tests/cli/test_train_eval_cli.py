"""End to end through the real command lines: a 2-iteration train + eval on a tiny generated dataset,
tools/eval.py on the checkpoints, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
import warnings

import pytest

import detector
from conftest import FORMATS, ROOT, TINY_MODEL, run_in_process

pytestmark = pytest.mark.slow

TINY_DATA = [
    "dataset.train.num_images=6", "dataset.val.num_images=4",
    "dataset.generator.min_image_size=96", "dataset.generator.max_image_size=128",
]
# Large objects (>= 40 px on 128 px images, at most 2 per image): the tiny model learns them within
# 150 iterations at twice the default lr (AP50 0.17, AP 0.08 on 8 val images, 10 s on 2 cores), so the
# "eval equals training's eval" checks below compare numbers that a model with other weights does not reach.
LEARNABLE_DATA = [
    "dataset.train.num_images=32", "dataset.val.num_images=8", "dataset.generator.min_image_size=128",
    "dataset.generator.max_image_size=128", "dataset.generator.max_objects=2", "dataset.generator.min_object_size=40",
]
LEARNABLE_MODEL = ["model.roi_heads.box_head.representation_size=64", "model.transform.min_size=128",
                   "model.transform.max_size=128"]
# float32 whatever the CPU: under bf16 autocast (solver.amp=auto on a CPU with AVX512-BF16) this short,
# fast schedule does not learn (AP50 0.0), and these tests are about the tools, not the precision.
LEARNED = ["solver.max_iter=150", "solver.base_lr=0.08", "solver.ims_per_batch=4", "solver.warmup_iters=10", "log_period=50",
           "solver.amp=off"]


def run_tool(tool, args, cwd):
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / tool), *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )


def train_args(tmp_path, out, extra=(), synthetic=True, data=TINY_DATA):
    data = [f"dataset.root={tmp_path / 'data'}", *data] if synthetic else []
    return [
        *data, *TINY_MODEL, "solver.max_iter=2",
        "solver.ims_per_batch=2", "solver.warmup_iters=1", "num_workers=0", "progress=false",
        "device=cpu", "seed=0", "log_period=1", f"output_dir={out}", *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    runs = {}
    # RoIPool: 2 iterations (the plumbing); RoIAlign: 150, so that its metrics are not zero.
    for pooler, extra in (("roi_pool", []), ("roi_align", LEARNED)):
        out = tmp / pooler
        args = train_args(tmp, out, [f"model/pooler={pooler}", *LEARNABLE_MODEL, *extra], data=LEARNABLE_DATA)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector.train(*args)  # in process (the Python API): the smoke tests below run the CLI
        runs[pooler] = out
    return tmp, runs


def test_train_writes_everything(trained):
    _, runs = trained
    out = runs["roi_align"]
    for name in ("model_final.pth", "metrics.json", "coco_results.json", "config.yaml", "last_checkpoint"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in metrics
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    assert {"train/loss", "train/loss_roi_cls", "train/loss_rpn_cls", "train/lr", "val/AP", "val/AP50"} <= scalars
    assert "val/detections_0" in images
    import torch

    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 150
    assert state["config"]["model"]["pooler"]["_target_"] == "detector.ops.RoIAlign"
    assert set(state) >= {"model", "optimizer", "scheduler", "iteration", "config"}


def test_eval_compares_checkpoints(trained):
    tmp, runs = trained
    out = tmp / "eval"
    ckpts = f"checkpoints=[{runs['roi_pool'] / 'model_final.pth'},{runs['roi_align'] / 'model_final.pth'}]"
    r = run_tool("eval.py", [ckpts, f"output_dir={out}", "progress=false", "num_workers=0"], cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RoIPool(s32)" in r.stdout and "RoIAlign(s32, sr2, aligned)" in r.stdout
    # OUT/eval.log keeps the table as printed (train.log does the same for the training run's val line).
    table = next(line for line in r.stdout.splitlines() if "RoIAlign(s32, sr2, aligned)" in line)
    log = (out / "eval.log").read_text()
    assert table in log and f"output: {out}" in log
    assert r.stdout.count(table) == 1  # printed once, not echoed again by the log handler
    assert "val AP=" in (runs["roi_align"] / "train.log").read_text()
    rows = json.loads((out / "comparison.json").read_text())
    assert [row["pooler"] for row in rows] == ["RoIPool(s32)", "RoIAlign(s32, sr2, aligned)"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "VOC07", "VOC", "TP_IoU", "images_per_second"):
        assert key in rows[0]
    assert "| 1 | RoIAlign(s32, sr2, aligned) |" in (out / "comparison.md").read_text()
    for png in ("ap_vs_iou", "per_class_ap", "pr_curves", "tp_iou_histogram", "ap_by_size"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 5000, png
    # Evaluating a checkpoint again reproduces the metrics its training run wrote: all of them, and
    # they are not zero (the run learned), so other weights could not match them.
    trained_metrics = json.loads((runs["roi_align"] / "metrics.json").read_text())
    assert trained_metrics["AP50"] > 0.05 and trained_metrics["AP"] > 0.01  # 150 iterations: CPU-dependent
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert rows[1][key] == pytest.approx(trained_metrics[key], abs=1e-9, nan_ok=True), key


def test_the_same_config_with_other_weights_does_not_reproduce_the_metrics(trained, tmp_path):
    """The equality above can fail: the learned run's checkpoint with the 2-iteration run's weights."""
    import torch

    from detector.cli import eval as eval_tool
    from omegaconf import OmegaConf

    tmp, runs = trained
    state = torch.load(runs["roi_align"] / "model_final.pth", weights_only=True)
    state["model"] = torch.load(runs["roi_pool"] / "model_final.pth", weights_only=True)["model"]
    torch.save(state, tmp_path / "swapped.pth")
    rows = eval_tool.evaluate(OmegaConf.create({
        "checkpoints": [str(tmp_path / "swapped.pth")], "results": [], "dataset": None, "voc_protocol": "devkit",
        "voc_results": False, "device": "cpu", "batch_size": 4, "num_workers": 0, "progress": False,
        "output_dir": str(tmp_path / "eval")}))
    trained_metrics = json.loads((runs["roi_align"] / "metrics.json").read_text())
    assert rows[0]["AP50"] < trained_metrics["AP50"] - 0.05


def test_eval_test_scale_overrides_the_checkpoints_own(trained, tmp_path):
    """test_scale=null evaluates at the checkpoint's own test size (its training eval's metrics); a number
    re-evaluates the same weights at another size (other metrics), recorded in the row."""
    from detector.cli import eval as eval_tool
    from omegaconf import OmegaConf

    tmp, runs = trained
    ckpt = runs["roi_align"] / "model_final.pth"
    base = {"checkpoints": [str(ckpt)], "results": [], "dataset": None, "voc_protocol": "devkit", "voc_results": False,
            "device": "cpu", "batch_size": 4, "num_workers": 0, "progress": False}
    own = eval_tool.evaluate(OmegaConf.create({**base, "test_scale": None, "output_dir": str(tmp_path / "own")}))
    one = eval_tool.evaluate(OmegaConf.create({**base, "test_scale": 1.0, "output_dir": str(tmp_path / "one")}))
    import torch

    stored = torch.load(ckpt, weights_only=False)["config"]["model"]["transform"]["test_scale"]
    assert own[0]["test_scale"] == stored and one[0]["test_scale"] == 1.0
    assert stored != 1.0 and own[0]["AP50"] != one[0]["AP50"]
    trained_metrics = json.loads((runs["roi_align"] / "metrics.json").read_text())
    assert own[0]["AP50"] == pytest.approx(trained_metrics["AP50"], abs=1e-9)


def test_multirun_sweeps_poolers(tmp_path):
    out = tmp_path / "sweep"
    args = train_args(tmp_path, out, ["solver.max_iter=1"])
    r = run_tool("train.py", ["-m", "model/pooler=roi_pool,roi_align", *args], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "0" / "model_final.pth").is_file() and (out / "1" / "model_final.pth").is_file()


def _one_line_error(r, *needles):
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_malformed_config_value(tmp_path, capsys):
    r = run_in_process("train", train_args(tmp_path, tmp_path / "o", ["solver.base_lr=abc"]), tmp_path, capsys)
    _one_line_error(r, "solver.base_lr", "abc")


def test_missing_dataset_path(tmp_path, capsys):
    args = train_args(tmp_path, tmp_path / "o", [
        "dataset=coco_json", f"dataset.train.images={tmp_path}/nope", f"dataset.train.annotations={tmp_path}/nope.json",
        f"dataset.val.images={tmp_path}/nope", f"dataset.val.annotations={tmp_path}/nope.json",
    ], synthetic=False)
    _one_line_error(run_in_process("train", args, tmp_path, capsys), "nope")


def test_unreadable_annotation_file(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    bad = tmp_path / "bad.json"
    bad.write_text("{ this is not json")
    args = train_args(tmp_path, tmp_path / "o", [
        "dataset=coco_json", f"dataset.train.images={tmp_path}/imgs", f"dataset.train.annotations={bad}",
        f"dataset.val.images={tmp_path}/imgs", f"dataset.val.annotations={bad}",
    ], synthetic=False)
    _one_line_error(run_in_process("train", args, tmp_path, capsys), str(bad))


def test_eval_missing_checkpoint(tmp_path, capsys):
    r = run_in_process("eval", [f"checkpoints=[{tmp_path}/none.pth]", f"output_dir={tmp_path}/o"], tmp_path, capsys)
    _one_line_error(r, "none.pth")


def test_resume_extends_the_run_with_this_runs_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    r = run_in_process("train", train_args(tmp_path, out), tmp_path, capsys)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_in_process("train", train_args(tmp_path, out, ["resume=true", "solver.max_iter=3"]), tmp_path, capsys)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at iteration 2" in r.stdout
    import torch

    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 3
    # A different model in the same output_dir is refused in one line.
    r = run_in_process("train", train_args(tmp_path, out, ["resume=true", "solver.max_iter=4", "model/pooler=roi_pool"]),
                       tmp_path, capsys)
    _one_line_error(r, "resume=true but the model config differs")


def test_eval_refuses_other_classes(trained, capsys):
    tmp, runs = trained
    small = FORMATS / "coco_small"
    r = run_in_process("eval", [
        f"checkpoints=[{runs['roi_align'] / 'model_final.pth'}]", "dataset=coco_json",
        f"dataset.val.images={small}", f"dataset.val.annotations={small / 'gt_dataset.json'}",
        "dataset.train.images=x", "dataset.train.annotations=x", f"output_dir={tmp / 'e2'}",
    ], tmp, capsys)
    _one_line_error(r, "was trained on classes")


def test_eval_refuses_checkpoints_of_different_datasets(trained, tmp_path, capsys):
    import torch

    tmp, runs = trained
    other = tmp_path / "other.pth"
    state = torch.load(runs["roi_pool"] / "model_final.pth", map_location="cpu", weights_only=False)
    state["config"]["dataset"]["val"]["annotations"] = str(tmp_path / "elsewhere.json")
    torch.save(state, other)
    r = run_in_process("eval", [f"checkpoints=[{runs['roi_align'] / 'model_final.pth'},{other}]", f"output_dir={tmp_path / 'e'}"],
                       tmp_path, capsys)
    _one_line_error(r, "different datasets")


def test_infer_convert_and_visualize_smoke(trained, tmp_path, capsys):
    """One subprocess per new tool, as a user runs them."""
    tmp, runs = trained
    from PIL import Image

    Image.new("RGB", (120, 90), (200, 100, 50)).save(tmp_path / "photo.jpg")
    r = run_tool("infer.py", [f"checkpoint={runs['roi_align'] / 'model_final.pth'}", f"input={tmp_path / 'photo.jpg'}",
                              f"output_dir={tmp_path / 'infer'}", "progress=false", "score_thresh=0.0"], cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "images/s" in r.stdout and (tmp_path / "infer" / "photo.jpg").is_file()
    assert json.loads((tmp_path / "infer" / "detections.json").read_text())[0]["file"].endswith("photo.jpg")
    data = ["dataset=synthetic", f"dataset.root={tmp / 'data'}", *TINY_DATA]
    r = run_tool("convert_dataset.py", [*data, "to=yolo", f"output={tmp_path / 'yolo'}"], cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dataset=yolo dataset.data=" in r.stdout and (tmp_path / "yolo" / "data.yaml").is_file()
    r = run_tool("visualize_data.py", ["dataset=yolo", f"dataset.data={tmp_path / 'yolo' / 'data.yaml'}", "num_images=3",
                                       "augmentation=strong", f"output_dir={tmp_path / 'vis'}"], cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "vis").glob("*.png"))) == 3 and "boxes drawn per class" in r.stdout
    r = run_in_process("infer", [f"checkpoint={runs['roi_align'] / 'model_final.pth'}", f"input={tmp_path / 'none'}"], tmp, capsys)
    assert r.returncode == 1 and r.stderr.startswith("error: input=") and len(r.stderr.strip().splitlines()) == 1


def test_image_cache_fills_only_when_loading_in_the_main_process(tmp_path, monkeypatch):
    from detector.data.dataset import DetectionDataset

    budgets, datasets = [], []
    real = DetectionDataset.cache_images
    monkeypatch.setattr(DetectionDataset, "cache_images",
                        lambda self, b: budgets.append(b) or datasets.append(self) or real(self, b))
    for run, (mb, workers) in enumerate(((1.5, 0), (0, 0), (1.5, 1))):
        args = [a for a in train_args(tmp_path, tmp_path / f"run{run}") if a != "num_workers=0"]
        args += ["solver.max_iter=1", "eval_period=0", f"num_workers={workers}", f"image_cache_mb={mb}"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            detector.train(*args)
    assert budgets == [int(1.5 * 2**20)]  # not at 0 MB, not with a worker process
    assert 0 < datasets[0].cached_bytes <= budgets[0]  # the run's batches came through it
    from detector.cli.config import validate_train_config
    from detector.errors import ConfigError
    from conftest import compose_config

    with pytest.raises(ConfigError, match="image_cache_mb"):
        validate_train_config(compose_config("train", ["image_cache_mb=-1"]))
