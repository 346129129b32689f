import subprocess
import sys

import pytest

from conftest import ROOT, run_in_process


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra", [[], ["--image-size", "640", "480", "--stride", "16", "--roi", "100", "80", "150", "90",
                                       "--output-size", "7", "--layout", "centered", "--reduction", "avg"]])
def test_visualize_roi_writes_a_png(tmp_path, extra, capsys):
    out = tmp_path / "fig.png"
    if extra:  # in process, the console command's path
        r = run_in_process("visualize-roi", ["--out", str(out), *extra], tmp_path, capsys)
    else:  # the tool's one subprocess smoke test
        r = run([str(ROOT / "tools" / "visualize_roi.py"), "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_visualize_roi_rejects_a_csv_of_the_wrong_size(tmp_path, capsys):
    bad = tmp_path / "fm.csv"
    bad.write_text("0.1,0.2\n0.3,0.4\n")
    r = run_in_process("visualize-roi", ["--csv", str(bad), "--out", str(tmp_path / "x.png")], tmp_path, capsys)
    assert r.returncode != 0 and "error:" in r.stderr and "fm.csv" in r.stderr


def test_benchmark_report_has_ratios():
    import torch

    from detector.cli.benchmark import report_ops, training_shape

    features, rois = training_shape(torch.device("cpu"))
    assert features.shape == (2, 512, 18, 25) and rois.shape == (1024, 5)
    names = ["torchvision roi_align (avg, centered)", "roi_align avg centered", "roi_align max centered",
             "torchvision roi_pool", "roi_pool floor"]
    rows = [(n, 0.1, 1.0, 0.9) for n in names]
    rows[1] = ("roi_align avg centered", 0.1, 0.25, 0.18)
    text = report_ops(rows, torch.device("cpu"))
    assert "4.00x" in text  # torchvision's 1.0 s / our 0.25 s
    assert "5.00x" in text  # with the gradient given: 0.9 s / 0.18 s
    assert "paired" not in text
    text = report_ops(rows, torch.device("cpu"), {"roi_align avg centered": 1.0, "roi_align max centered": 1.37})
    assert "vs avg, paired" in text and "1.37x" in text


def _tiny_benchmark_args(tmp_path, **kw):
    import argparse

    data = [f"dataset.root={tmp_path / 'data'}", "dataset.train.num_images=8", "dataset.generator.min_image_size=96",
            "dataset.generator.max_image_size=128"]
    args = dict(width=0.0625, size=128, batch=2, rois=32, rpn_topk=[200, 100], rounds=1, amp="off", split=True,
                no_memory=True, override=data, device="cpu")
    return argparse.Namespace(**{**args, **kw})


def test_training_benchmark_builds_torchvisions_detector_with_our_settings(tmp_path):
    import torch
    from omegaconf import OmegaConf

    from detector.cli import benchmark_train as bt

    # As in a fresh `python tools/benchmark.py train`: no resolver registered by another test.
    for name in ("repo_root", "scaled_lr", "fractions_of"):
        OmegaConf.clear_resolver(name)
    a = _tiny_benchmark_args(tmp_path)
    cfg = bt.benchmark_config(width=a.width, size=a.size, rois=a.rois, rpn_topk=tuple(a.rpn_topk), pooler="roi_align", extra=a.override)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (solver.base_lr's scaled_lr)
    batches, names = bt.load_batches(cfg, a.batch, 2, torch.device("cpu"))
    ours, theirs = bt.build_pair(cfg, names)
    # The same backbone weights, and the settings read from the one config.
    for (k, v), (k2, v2) in zip(ours.backbone.state_dict().items(), theirs.backbone.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert theirs.rpn._pre_nms_top_n["training"] == 200 and theirs.rpn._post_nms_top_n["training"] == 100
    assert theirs.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    assert theirs.transform.min_size == (128,) and theirs.transform.max_size == 128
    assert theirs.rpn.anchor_generator.num_anchors_per_location() == [ours.rpn.anchor_generator.num_anchors_per_location]
    assert theirs.roi_heads.box_predictor.cls_score.out_features == len(names) + 1
    # Its pooler is torchvision's op with our pooler's settings (aligned, ratio 2, stride 32).
    f = torch.randn(2, ours.backbone.out_channels, 4, 4)
    boxes = [torch.tensor([[3.0, 5.0, 90.0, 70.0]]), torch.tensor([[10.0, 0.0, 60.0, 128.0]])]
    torch.testing.assert_close(theirs.roi_heads.box_roi_pool({"0": f}, boxes, None), ours.roi_heads.pooler(f, boxes), rtol=1e-5, atol=1e-5)
    # One step of each, and our step stage by stage: every stage timed, all losses finite.
    for model in (ours, theirs):
        assert bt.train_step_fn(model, torch.device("cpu"), "off")(*batches[0]) > 0
    clock = bt.staged_step(ours, *batches[1])
    assert set(clock) == {"transform", "backbone", "rpn", "roi sampling", "pooler", "box head"}
    assert all(v > 0 for v in clock.values())


def test_training_benchmark_report(tmp_path):
    from detector.cli import benchmark_train as bt

    text = bt.run_train_benchmark(_tiny_benchmark_args(tmp_path))
    for line in ("ours roi_align", "torchvision roi_pool", "roi_align  train", "whole step / backbone-only", "pooler"):
        assert line in text, text
