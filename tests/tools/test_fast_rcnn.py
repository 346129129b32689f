"""Fast R-CNN end to end, in-process: dump a Faster R-CNN's proposals, train and evaluate on them."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from conftest import TINY_MODEL, compose_config
from detector.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.slow

DATA = ["dataset.train.num_images=4", "dataset.val.num_images=3", "dataset.generator.min_image_size=96",
        "dataset.generator.max_image_size=128"]
RUN = [*TINY_MODEL, "solver.max_iter=2", "solver.ims_per_batch=2", "solver.warmup_iters=1", "num_workers=0",
       "progress=false", "device=cpu", "seed=0", "checkpoint_period=0"]


def tool(name, config, overrides):
    import importlib

    module = importlib.import_module(name)
    fn = {"train": "train", "eval": "evaluate", "dump_proposals": "dump"}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(module, fn)(compose_config(config, overrides))


@pytest.fixture(scope="module")
def faster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast")
    data = [f"dataset.root={tmp / 'data'}", *DATA]
    tool("train", "train", [*data, *RUN, f"output_dir={tmp / 'faster'}"])
    ckpt = tmp / "faster" / "model_final.pth"
    for split in ("train", "val"):
        recall = tool("dump_proposals", "dump_proposals", [f"checkpoint={ckpt}", f"split={split}",
                      f"output={tmp / f'{split}.pt'}", "num_proposals=50", "progress=false", "num_workers=0"])
        assert {"recall@100@0.5", "recall@300@0.7", "AR@100", "AR@1000"} <= set(recall)
    return tmp, data, ckpt


def test_dump_writes_proposals_and_recall(faster):
    tmp, _, _ = faster
    state = torch.load(tmp / "val.pt", weights_only=True)
    assert len(state["image_ids"]) == 3 and all(b.shape[1] == 4 and len(b) <= 50 for b in state["boxes"])
    assert all(torch.all(s[:-1] >= s[1:]) for s in state["scores"])  # best first
    saved = json.loads((tmp / "val.pt.recall.json").read_text())
    assert saved["split"] == "val" and 0.0 <= saved["AR@100"] <= 1.0


@pytest.mark.parametrize("pooler", ["roi_pool", "roi_align"])
def test_fast_rcnn_trains_and_evaluates_on_the_dumped_proposals(faster, pooler):
    tmp, data, _ = faster
    props = [f"dataset.train.proposals={tmp / 'train.pt'}", f"dataset.val.proposals={tmp / 'val.pt'}"]
    out = tmp / f"fast_{pooler}"
    metrics = tool("train", "train", ["model=fast_rcnn_vgg16", f"model/pooler={pooler}", *data, *props, *RUN, f"output_dir={out}"])
    assert "AP50" in metrics
    state = torch.load(out / "model_final.pth", weights_only=True)
    assert state["config"]["model"]["rpn"] is None and not any(k.startswith("rpn.") for k in state["model"])
    # batch_size=2: the batches of training's final evaluation (padding to a batch's largest image changes
    # the features near the border, so other batches give slightly other detections).
    rows = tool("eval", "eval", [f"checkpoints=[{out / 'model_final.pth'}]", "progress=false", "num_workers=0", "batch_size=2",
                                 "device=cpu", f"output_dir={tmp / ('eval_' + pooler)}"])
    assert rows[0]["model"].startswith("Fast R-CNN") and rows[0]["AP50"] == pytest.approx(metrics["AP50"], abs=1e-9)
    assert rows[0]["proposals"]["file"].endswith("val.pt") and "AR@100" in rows[0]["proposals"]


def test_fast_rcnn_without_proposal_file_and_dump_without_rpn(faster):
    tmp, data, _ = faster
    with pytest.raises(ConfigError, match=r"model=fast_rcnn_vgg16 needs dataset\.train\.proposals=FILE"):
        tool("train", "train", ["model=fast_rcnn_vgg16", *data, *RUN, f"output_dir={tmp / 'x'}"])
    with pytest.raises(CheckpointError, match="is a Fast R-CNN \\(no RPN\\)"):
        tool("dump_proposals", "dump_proposals", [f"checkpoint={tmp / 'fast_roi_align' / 'model_final.pth'}",
             f"output={tmp / 'no.pt'}", "progress=false", "num_workers=0"])
