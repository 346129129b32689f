"""The package as a user installs it: build the wheel, install it into a fresh virtual environment
outside the checkout, and run the console command and the Python API from another directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, TINY_MODEL

pytestmark = pytest.mark.slow

DATA = ["dataset.train.num_images=4", "dataset.val.num_images=2", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]


def _run(cmd, cwd, env):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")
    env.pop("PYTHONPATH", None)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(ROOT)], cwd=tmp_path, env=env)
    (wheel,) = (tmp_path / "dist").glob("roilens-*.whl")
    # The dependencies (torch, ...) come from this interpreter's site-packages; the package from the wheel.
    venv.create(tmp_path / "venv", system_site_packages=True, with_pip=False)  # pip from outside: no ensurepip
    bin_dir = tmp_path / "venv" / "bin"
    _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q", "--no-deps",
          "--force-reinstall", str(wheel)], cwd=tmp_path, env=env)
    work = tmp_path / "work"
    work.mkdir()
    python, roilens = str(bin_dir / "python"), str(bin_dir / "roilens")

    # roilens train, with the default dataset root: datasets/ in the current directory (no checkout).
    _run([roilens, "train", *DATA, *TINY_MODEL, "solver.max_iter=2", "solver.ims_per_batch=2",
          "solver.warmup_iters=1", "num_workers=0", "progress=false", "device=cpu", "output_dir=run"], cwd=work, env=env)
    assert (work / "datasets" / "synthetic").is_dir() and (work / "run" / "model_final.pth").is_file()
    assert (work / "run" / "train.log").is_file()
    r = _run([roilens, "eval", "checkpoints=[run/model_final.pth]", "output_dir=ev", "progress=false",
              "num_workers=0", "device=cpu"], cwd=work, env=env)
    assert (work / "ev" / "comparison.json").is_file() and "RoIAlign" in r.stdout
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(work / "photo.png")
    _run([roilens, "infer", "checkpoint=run/model_final.pth", "input=photo.png", "output_dir=drawn", "device=cpu",
          "progress=false"], cwd=work, env=env)
    assert json.loads((work / "drawn" / "detections.json").read_text())[0]["width"] == 120
    api = _run([python, "-c", "import detector; (r,) = detector.load('run/model_final.pth', device='cpu')"
                ".predict('photo.png'); print(detector.__file__, r['boxes'].shape[-1])"], cwd=work, env=env)
    where, columns = api.stdout.split()[-2:]
    assert str(tmp_path / "venv") in where and str(ROOT) not in where  # the installed copy, not the checkout
    assert columns == "4"
