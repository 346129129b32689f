"""The paper's 4-step alternating training: its steps run, and what it freezes stays bit-identical."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import TINY_MODEL, compose_config

pytestmark = pytest.mark.slow


def test_four_steps_run_and_frozen_tensors_are_untouched(tmp_path):
    from detector.cli import alternating

    cfg = compose_config("train", [
        f"dataset.root={tmp_path / 'data'}", "dataset.train.num_images=4", "dataset.val.num_images=2",
        "dataset.generator.min_image_size=96", "dataset.generator.max_image_size=128", *TINY_MODEL,
        "solver.max_iter=3", "solver.ims_per_batch=2", "solver.warmup_iters=1", "num_workers=0", "progress=false",
        "device=cpu", "seed=0", "checkpoint_period=0", "training=alternating",
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = alternating.train_alternating(cfg, tmp_path / "alt")
    assert "AP50" in metrics and (tmp_path / "alt" / "metrics.json").is_file()
    load = lambda step: torch.load(next((tmp_path / "alt").glob(f"step{step}_*")) / "model_final.pth", weights_only=True)["model"]  # noqa: E731
    s1, s2, s3, s4 = (load(k) for k in (1, 2, 3, 4))
    final = torch.load(tmp_path / "alt" / "model_final.pth", weights_only=True)
    for step in (1, 3):
        assert (next((tmp_path / "alt").glob(f"step{step}_*")) / "proposals_train.pt").is_file()
    backbone = [k for k in s2 if k.startswith("backbone.")]
    assert backbone and not any(k.startswith("rpn.") for k in s2)  # step 2 is a Fast R-CNN
    for k in backbone:  # frozen in steps 3 and 4: bit-identical to step 2's, and in the final model
        assert torch.equal(s3[k], s2[k]) and torch.equal(s4[k], s2[k]) and torch.equal(final["model"][k], s2[k]), k
    assert any(not torch.equal(s1[k], s2[k]) for k in backbone)  # steps 1 and 2 each trained it
    rpn = [k for k in s3 if k.startswith("rpn.")]
    assert any(not torch.equal(s3[k], s1[k]) for k in rpn)  # step 3 trained the RPN-only layers
    assert all(torch.equal(final["model"][k], s3[k]) for k in rpn)
    heads = [k for k in s4 if k.startswith("roi_heads.")]
    assert all(torch.equal(final["model"][k], s4[k]) for k in heads)
    assert final["config"]["model"]["rpn"] is not None  # a normal Faster R-CNN checkpoint
