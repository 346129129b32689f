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

    module = importlib.import_module(f"detector.cli.{name}")
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


def test_selective_search_proposals_in_parallel(tmp_path):
    pytest.importorskip("selective_search")
    data = [f"dataset.root={tmp_path / 'data'}", *DATA]
    recall = tool("dump_proposals", "dump_proposals", ["method=selective_search", "dataset=synthetic", *data, "split=val",
                  f"output={tmp_path / 'ss.pt'}", "num_workers=2", "progress=false"])
    state = torch.load(tmp_path / "ss.pt", weights_only=True)
    assert len(state["boxes"]) == 3 and "scores" not in state and all(len(b) > 0 for b in state["boxes"])
    saved = json.loads((tmp_path / "ss.pt.recall.json").read_text())
    assert saved["method"] == "selective_search" and saved["seconds_per_image"] > 0 and saved["workers"] == 2
    assert 0 <= recall["recall@1000@0.5"] <= 1


def test_detectron2_proposals_convert(tmp_path):
    import pickle

    import numpy as np

    from detector.data.proposals import load_proposals

    with open(tmp_path / "d2.pkl", "wb") as f:  # detectron2's layout, XYWH_ABS boxes (bbox_mode 1)
        pickle.dump({"ids": [7, 9], "boxes": [np.array([[1, 2, 10, 20], [0, 0, 5, 5]], dtype=np.float32), np.zeros((0, 4))],
                     "objectness_logits": [np.array([0.1, 0.9], dtype=np.float32), np.zeros(0)], "bbox_mode": 1}, f)
    from detector.data.proposals import from_detectron2

    out = from_detectron2(tmp_path / "d2.pkl", tmp_path / "d2.pt")
    images = {7: {"file_name": "a.jpg", "width": 100, "height": 100}, 9: {"file_name": "b.jpg", "width": 50, "height": 50}}
    got = load_proposals(out, images)
    assert got[7].tolist() == [[0, 0, 5, 5], [1, 2, 11, 22]] and got[9].shape == (0, 4)  # sorted by logit, xyxy


@pytest.mark.parametrize("append_gt", [True, False])
def test_ground_truth_is_added_to_external_proposals_in_training(append_gt):
    """Proposals far from the object: only the appended ground truth can be a foreground RoI."""
    from conftest import tiny_model

    torch.manual_seed(0)
    model = tiny_model(overrides=["model=fast_rcnn_vgg16", f"model.roi_heads.proposal_append_gt={str(append_gt).lower()}"]).train()
    assert model.rpn is None
    target = {"boxes": torch.tensor([[60.0, 60.0, 100.0, 100.0]]), "labels": torch.tensor([1]),
              "proposals": torch.tensor([[0.0, 0.0, 20.0, 20.0], [5.0, 0.0, 30.0, 25.0]])}
    losses = model([torch.rand(3, 128, 128)], [target])
    assert set(losses) == {"loss_roi_cls", "loss_roi_box"}
    assert (losses["loss_roi_box"].item() > 0) == append_gt


def test_detectron2_proposal_pickle_cannot_run_code(tmp_path, monkeypatch):
    """A pickle naming any callable but numpy's array rebuilders (and BoxMode) is refused unread."""
    import os
    import pickle
    import sys
    import types
    from enum import IntEnum

    import numpy as np

    from detector.data.proposals import from_detectron2, load_proposals
    from detector.errors import DatasetError

    monkeypatch.chdir(tmp_path)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch PWNED",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"ids": [1], "boxes": [Payload()]}, f)
    with pytest.raises(DatasetError, match=r"evil\.pkl: not a detectron2 proposal file, refused unread .*posix\.system"):
        from_detectron2(tmp_path / "evil.pkl", tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "evil.pt").exists()

    # detectron2's own BoxMode enum (pickled by reference) is read as its value, without detectron2.
    module = types.ModuleType("detectron2.structures.boxes")
    BoxMode = IntEnum("BoxMode", {"XYXY_ABS": 0, "XYWH_ABS": 1}, module="detectron2.structures.boxes")
    module.BoxMode = BoxMode
    for name in ("detectron2", "detectron2.structures"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "detectron2.structures.boxes", module)
    with open(tmp_path / "d2.pkl", "wb") as f:
        pickle.dump({"ids": [7], "boxes": [np.array([[1, 2, 10, 20]], dtype=np.float32)],
                     "bbox_mode": BoxMode.XYWH_ABS}, f)
    for name in ("detectron2", "detectron2.structures", "detectron2.structures.boxes"):
        monkeypatch.delitem(sys.modules, name)
    out = from_detectron2(tmp_path / "d2.pkl", tmp_path / "d2.pt")
    got = load_proposals(out, {7: {"file_name": "a.jpg", "width": 100, "height": 100}})
    assert got[7].tolist() == [[1, 2, 11, 22]]
