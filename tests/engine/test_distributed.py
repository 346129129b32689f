"""torchrun DDP on CPU (gloo): replicas stay identical, losses match one process, two "nodes" work."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL

pytestmark = pytest.mark.slow

DATA = ["dataset.train.num_images=8", "dataset.val.num_images=4", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tmp_path, out, extra=()):
    # No BatchNorm: with it each rank normalises by its own half of the batch, which is not what one
    # process does; then the comparison would measure BN, not the data-parallel plumbing.
    return [f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, "model.backbone.batch_norm=false",
            "solver.ims_per_batch=4", "solver.max_iter=3", "solver.warmup_iters=1", "num_workers=0", "progress=false",
            "device=cpu", "seed=0", "log_period=1", "checkpoint_period=0", f"output_dir={out}", *extra]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")


def _torchrun(torchrun_args, args):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args,
                             str(ROOT / "tools" / "train.py"), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(log_file):
    """Per logged iteration: the total loss (rank 0's log: the mean over ranks)."""
    return [float(m) for m in re.findall(r"iter \d+/\d+ .*?\bloss ([0-9.]+)", log_file.read_text())]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), *_args(tmp, tmp / "one")], env=_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp


def _check(single, out, stdout, stderr):
    log = (out / "train.log").read_text()
    assert "DDP: the 2 replicas hold identical weights" in log, stderr[-2000:]
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model
    one, two = _losses(single / "one" / "train.log"), _losses(out / "train.log")
    assert len(one) == len(two) == 3
    # Same global batch, same initial weights: the first step's loss differs only by the samplers'
    # random draws (each rank draws its own anchors and RoIs): within 5 %.
    assert two[0] == pytest.approx(one[0], rel=0.05)
    assert (out / "metrics.json").is_file() and (out / "model_final.pth").is_file()


def test_two_processes_on_one_machine(single):
    out = single / "two"
    proc = _torchrun(["--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={_free_port()}"], _args(single, out))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    _check(single, out, stdout, stderr)


def test_two_nodes_through_the_c10d_rendezvous(single):
    out = single / "nodes"
    port = _free_port()
    common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
              "--rdzv-id=test"]
    nodes = [_torchrun([*common, f"--node-rank={r}"], _args(single, out)) for r in (0, 1)]
    results = [n.communicate(timeout=600) for n in nodes]
    for n, (_, stderr) in zip(nodes, results):
        assert n.returncode == 0, stderr[-3000:]
    _check(single, out, *results[0])



def _override(args, **values):
    """``args`` with ``key=value`` replaced for each given key (dots as ``__``), else appended."""
    values = {k.replace("__", "."): v for k, v in values.items()}
    kept = [a for a in args if a.split("=", 1)[0] not in values]
    return [*kept, *(f"{k}={v}" for k, v in values.items())]


def _workers(pid):
    """The training processes torchrun started (its children running tools/train.py)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    return [c for c in children if "train.py" in open(f"/proc/{c}/cmdline").read()]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds torchrun's workers through /proc")
def test_a_killed_worker_comes_back_from_the_newest_checkpoint_under_max_restarts(single):
    """torchrun --max-restarts=1 + resume=auto: SIGKILL one worker mid-run; the restarted group
    resumes from the newest complete checkpoint and ends bit-identical to an uninterrupted run."""
    import signal
    import time

    def args(out):
        return _override(_args(single, out), solver__max_iter=24, checkpoint_period=4, resume="auto", log_period=4)

    elastic = ["--nproc-per-node=2", "--max-restarts=1", "--rdzv-backend=c10d"]
    ref = _torchrun([*elastic, f"--rdzv-endpoint=127.0.0.1:{_free_port()}"], args(single / "elastic_ref"))
    _, stderr = ref.communicate(timeout=600)
    assert ref.returncode == 0, stderr[-3000:]

    out = single / "elastic"
    proc = _torchrun([*elastic, f"--rdzv-endpoint=127.0.0.1:{_free_port()}"], args(out))
    deadline = time.time() + 300
    while not (out / "model_0000008.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    victims = _workers(proc.pid)
    assert victims, "no worker to kill"
    os.kill(victims[-1], signal.SIGKILL)
    assert not (out / "model_final.pth").exists(), "the run finished before a worker was killed"
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    log = (out / "train.log").read_text()
    assert re.search(r"resum\w+ .*model_00000\d\d\.pth", log, re.IGNORECASE), log[-2000:]
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    expected = torch.load(single / "elastic_ref" / "model_final.pth", weights_only=True)["model"]
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)
