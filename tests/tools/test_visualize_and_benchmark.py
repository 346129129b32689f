import subprocess
import sys

import pytest

from conftest import ROOT


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra", [[], ["--image-size", "640", "480", "--stride", "16", "--roi", "100", "80", "150", "90", "--output-size", "7", "--layout", "centered", "--reduction", "avg"]])
def test_visualize_roi_writes_a_png(tmp_path, shared_dir, extra):
    out = tmp_path / "fig.png"
    r = run([str(ROOT / "tools" / "visualize_roi.py"), "--out", str(out), *extra], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_visualize_roi_rejects_a_csv_of_the_wrong_size(tmp_path):
    bad = tmp_path / "fm.csv"
    bad.write_text("0.1,0.2\n0.3,0.4\n")
    r = run([str(ROOT / "tools" / "visualize_roi.py"), "--csv", str(bad), "--out", str(tmp_path / "x.png")], cwd=tmp_path)
    assert r.returncode != 0 and "error:" in r.stderr and "fm.csv" in r.stderr


def test_benchmark_report_has_ratios():
    sys.path.insert(0, str(ROOT / "tools"))
    import torch
    from benchmark import report_ops, training_shape

    features, rois = training_shape(torch.device("cpu"))
    assert features.shape == (2, 512, 18, 25) and rois.shape == (1024, 5)
    names = ["torchvision roi_align (avg, centered)", "roi_align avg centered", "roi_align max centered",
             "torchvision roi_pool", "roi_pool floor"]
    rows = [(n, 0.1, 1.0) for n in names]
    rows[1] = ("roi_align avg centered", 0.1, 0.25)
    text = report_ops(rows, torch.device("cpu"))
    assert "4.00x" in text  # torchvision's 1.0 s / our 0.25 s
    assert "paired" not in text
    text = report_ops(rows, torch.device("cpu"), {"roi_align avg centered": 1.0, "roi_align max centered": 1.37})
    assert "vs avg, paired" in text and "1.37x" in text
