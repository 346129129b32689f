"""Shared by the export tests: small models, images of several sizes, detections matched one to one."""

from __future__ import annotations

import torch

from conftest import tiny_model

SIZES = [(120, 160), (97, 203), (256, 130)]


def images():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, h, w, generator=g) for h, w in SIZES]


def model(pooler_overrides):
    torch.manual_seed(0)
    # A low score threshold: dozens of detections per image, so that the comparison is not of empty sets.
    return tiny_model(3, [*pooler_overrides, "model.roi_heads.score_thresh=0.2"]).eval()


def assert_same_detections(got, expected, *, box_tol=1e-3, score_tol=1e-4):
    """Every detection matched one to one: same label, score and box within the tolerances (scores
    that tie or nearly tie may come out in another order)."""
    assert len(got["scores"]) == len(expected["scores"]) > 0
    free = torch.ones(len(got["scores"]), dtype=torch.bool)
    for box, score, label in zip(expected["boxes"], expected["scores"], expected["labels"]):
        close = (free & (got["labels"] == label) & ((got["scores"] - score).abs() <= score_tol)
                 & ((got["boxes"] - box).abs().amax(1) <= box_tol))
        assert close.any(), f"no match for label {int(label)} score {float(score):.6f} box {box.tolist()}"
        free[torch.nonzero(close)[0, 0]] = False


def eager(model, image):
    with torch.no_grad():
        (out,) = model([image])
    return out


