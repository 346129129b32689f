"""torchrun DDP on CPU (gloo): two ranks reproduce one process, the default model's replicas end identical
and its sharded evaluation is the checkpoint's, two "nodes" work, a killed worker resumes exactly."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL

pytestmark = pytest.mark.slow

# One image size (128 x 128): each rank pads its part of the batch to the same size as one process
# pads the whole batch, so the per-rank batches are exactly the halves of the global one.
DATA = ["dataset.train.num_images=8", "dataset.val.num_images=4", "dataset.generator.min_image_size=128",
        "dataset.generator.max_image_size=128"]
NO_BN = ["model.backbone.batch_norm=false"]

# Runs tools/train.py as torchrun would, and saves this rank's whole state just before the run's own
# end-of-training check of the replicas, so that the test compares the replicas itself.
SPY = """
import os
import torch
import detector.engine.distributed as distributed
real = distributed.replicas_agree
def spy(model):
    torch.save(model.state_dict(), os.path.join({dump!r}, "rank%s.pt" % os.environ["RANK"]))
    return real(model)
distributed.replicas_agree = spy  # before the command imports it
from detector.cli.train import run
run()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(tmp_path, out, extra=()):
    return [f"dataset.root={tmp_path / 'data'}", *DATA, *TINY_MODEL, "solver.ims_per_batch=4", "solver.max_iter=3",
            "solver.warmup_iters=1", "num_workers=0", "progress=false", "device=cpu", "seed=0", "log_period=1",
            # float32 on every CPU: bf16 autocast (solver.amp=auto where the CPU has it) rounds the
            # two-process and one-process reductions differently, beyond the comparison's tolerance.
            "solver.amp=off",
            "checkpoint_period=0", f"output_dir={out}", *extra]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="0")


def _torchrun(torchrun_args, args, script=None):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args,
                             str(script or ROOT / "tools" / "train.py"), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _spy(tmp_path, out):
    out.mkdir(parents=True, exist_ok=True)
    script = tmp_path / f"spy_{out.name}.py"
    script.write_text(SPY.format(dump=str(out)))
    return script


def _losses(log_file):
    """Per logged iteration: every loss term (rank 0's log: the mean over ranks), 4 decimals."""
    return [{k: float(v) for k, v in re.findall(r"\b(loss\w*) ([0-9.]+)", line)}
            for line in log_file.read_text().splitlines() if re.search(r"iter \d+/\d+ ", line)]


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process run of the same global batch (no BatchNorm: see the first test), in process."""
    import detector

    tmp = tmp_path_factory.mktemp("ddp")
    detector.train(*_args(tmp, tmp / "one", NO_BN))
    return tmp


def test_two_processes_reproduce_the_one_process_run(single):
    """Same global batch, and every random draw a function of the sample (detector.data.sampler): two
    ranks train the model one process trains, up to the order of floating-point sums. A wrong shard,
    a wrong global batch or per-rank draws are far outside these tolerances. Without BatchNorm: with it
    each rank normalises by its own half of the batch (SyncBatchNorm has no CPU kernel)."""
    out = single / "two"
    proc = _torchrun(["--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={_free_port()}"],
                     _args(single, out, NO_BN))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    one, two = _losses(single / "one" / "train.log"), _losses(out / "train.log")
    assert len(one) == len(two) == 3 and all(len(line) >= 5 for line in one)
    for a, b in zip(one, two):
        assert b == pytest.approx(a, abs=2e-4)  # the log's 4 decimals
    final, expected = _weights(out / "model_final.pth"), _weights(single / "one" / "model_final.pth")
    assert not any(k.startswith("module.") for k in final)  # the unwrapped model
    assert final.keys() == expected.keys()
    for k in final:
        torch.testing.assert_close(final[k], expected[k], rtol=1e-4, atol=1e-5, msg=k)
    # The sharded evaluation scored every val image once, as the one process did.
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (single / "one", out))
    assert m1["num_images"] == m2["num_images"] == 4


def _check_default_model(tmp, out):
    """BatchNorm (the default model): the replicas end identical, buffers included, the checkpoint holds
    them, and the sharded evaluation is the evaluation of that checkpoint."""
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    final = _weights(out / "model_final.pth")
    assert any("running_mean" in k for k in final)  # the default model has BatchNorm
    assert ranks[0].keys() == ranks[1].keys() == final.keys()
    for k in final:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.equal(ranks[0][k], final[k]), k
    _check_sharded_evaluation(tmp, out)


def _check_sharded_evaluation(tmp, out):
    """The run's own (sharded) final evaluation is the evaluation of the checkpoint it wrote."""
    from detector.cli import eval as eval_tool
    from omegaconf import OmegaConf

    eval_tool.evaluate(OmegaConf.create({
        "checkpoints": [str(out / "model_final.pth")], "results": [], "dataset": None, "voc_protocol": "devkit",
        "voc_results": False, "device": "cpu", "batch_size": 4, "num_workers": 0, "progress": False,
        "output_dir": str(tmp / f"eval_{out.name}"), "trusted_targets": []}))
    (again_dir,) = (tmp / f"eval_{out.name}").glob("0_*")
    trained, evaluated = (json.loads((d / "metrics.json").read_text()) for d in (out, again_dir))
    assert trained["num_images"] == evaluated["num_images"] == 4
    assert trained["num_detections"] == evaluated["num_detections"]
    sharded, again = (json.loads((d / "coco_results.json").read_text()) for d in (out, again_dir))
    assert len(sharded) == len(again) > 0

    def key(d):
        return d["image_id"], d["category_id"], -d["score"]

    for a, b in zip(sorted(sharded, key=key), sorted(again, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-2)


# The 2-rank run on the default model, long enough for the elastic test to kill a worker mid-run: its
# reference (a killed-and-restarted run must end bit-identical to it).
# Every score kept (score_thresh 0): after 24 iterations the tiny model's scores may all be under the
# default 0.05, and the sharded evaluation must be compared on detections, not on none.
ELASTIC = {"solver__max_iter": 24, "checkpoint_period": 4, "resume": "auto", "log_period": 4,
           "model__roi_heads__score_thresh": 0.0}


@pytest.fixture(scope="module")
def two_nodes(single):
    """Two "nodes" of one process each through the c10d rendezvous, the default (BatchNorm) model."""
    from datetime import timedelta

    out = single / "nodes"
    # The rendezvous store lives in this process, not in one node's agent (is_host=false for both): an
    # agent that hosts it takes it down when its worker ends, and the other agent, still polling the
    # rendezvous in its monitor loop, then fails with "The connection to the C10d store has failed"
    # (a race seen in CI; torchrun's c10d backend accepts an external store this way).
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, wait_for_workers=False,
                                       timeout=timedelta(seconds=600))
    common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{store.port}",
              "--rdzv-id=test", "--rdzv-conf=is_host=false"]
    script = _spy(single, out)
    nodes = [_torchrun([*common, f"--node-rank={r}"], _override(_args(single, out), **ELASTIC), script=script)
             for r in (0, 1)]
    results = [n.communicate(timeout=600) for n in nodes]
    del store
    for n, (_, stderr) in zip(nodes, results):
        assert n.returncode == 0, stderr[-3000:]
    return out


def test_two_nodes_through_the_c10d_rendezvous(single, two_nodes):
    _check_default_model(single, two_nodes)


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
def test_a_killed_worker_comes_back_from_the_newest_checkpoint_under_max_restarts(single, two_nodes):
    """torchrun --max-restarts=1 + resume=auto: SIGKILL one worker mid-run; the restarted group
    resumes from the newest complete checkpoint and ends bit-identical to an uninterrupted 2-rank run."""
    import signal
    import time

    elastic = ["--nproc-per-node=2", "--max-restarts=1", "--rdzv-backend=c10d"]
    out = single / "elastic"
    proc = _torchrun([*elastic, f"--rdzv-endpoint=127.0.0.1:{_free_port()}"], _override(_args(single, out), **ELASTIC))
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
    expected = torch.load(two_nodes / "model_final.pth", weights_only=True)["model"]
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)


# Rank 1's loss is NaN at its 2nd step only; rank 0's is finite. Saves each rank's final state.
NAN_ON_ONE_RANK = """
import os
import torch
import detector.engine.distributed as distributed
from torch.nn.parallel import DistributedDataParallel

real_forward, calls = DistributedDataParallel.forward, [0]
def forward(self, *args, **kwargs):
    losses = real_forward(self, *args, **kwargs)
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 2:
        losses = {{k: v * float("nan") for k, v in losses.items()}}
    return losses
DistributedDataParallel.forward = forward
real = distributed.replicas_agree
def spy(model):
    torch.save(model.state_dict(), os.path.join({dump!r}, "rank%s.pt" % os.environ["RANK"]))
    return real(model)
distributed.replicas_agree = spy
from detector.cli.train import run
run()
"""


def test_a_nan_on_one_rank_is_skipped_by_every_rank(single):
    """solver.nonfinite=skip: the averaged loss is NaN on both ranks, so both skip the same step (a rank
    that skipped alone would hang the other's gradient all-reduce); the default model's replicas end
    identical, buffers included, and its sharded evaluation is the checkpoint's."""
    out = single / "nan"
    out.mkdir()
    script = single / "nan_on_one_rank.py"
    script.write_text(NAN_ON_ONE_RANK.format(dump=str(out)))
    proc = _torchrun(["--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={_free_port()}"],
                     _args(single, out, ["solver.nonfinite=skip"]), script=script)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "iteration 2: non-finite loss" in log and "step skipped (1 so far)" in log
    _check_default_model(single, out)  # torchrun --nproc-per-node=2 on the default model


def test_two_processes_with_a_weight_average_evaluate_and_save_the_average(single):
    """solver.ema_decay under DDP, the default (BatchNorm) model: the checkpoint's model is the average,
    the training weights ride beside it, and the sharded final evaluation scored that average."""
    out = single / "ema"
    proc = _torchrun(["--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={_free_port()}"],
                     _args(single, out, ["solver.ema_decay=0.5", "model.roi_heads.score_thresh=0.0"]))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["ema"]["updates"] == 3
    assert any(not torch.equal(v, saved["ema"]["training_model"][k]) for k, v in saved["model"].items()
               if v.is_floating_point())
    _check_sharded_evaluation(single, out)
