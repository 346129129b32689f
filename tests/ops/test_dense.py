"""The fixed-shape operators of exported programs equal the eager operators, in every mode of the seed."""

import importlib

import pytest
import torch

from pooler_modes import MODES, make_pooler


def _inputs(seed=0, images=2):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(images, 5, 9, 13, generator=g)  # a 288 x 416 image at stride 32
    xy = torch.rand(40, 2, generator=g) * torch.tensor([380.0, 260.0])
    wh = torch.rand(40, 2, generator=g) * torch.tensor([300.0, 200.0]) + 0.5
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([416.0, 288.0]))], 1)  # inside the image
    boxes[0] = torch.tensor([100.0, 80.0, 100.0, 80.0])  # zero size
    boxes[1] = torch.tensor([0.0, 0.0, 416.0, 288.0])  # the whole map
    boxes[2] = torch.tensor([300.0, 210.0, 530.0, 390.0]).clamp(max=287.0)  # the seed's box, cut by the border
    batch = torch.randint(images, (40, 1), generator=g).float()
    return features, torch.cat([batch, boxes], 1)


def _as_exported(monkeypatch):
    for name in ("detector.ops.roi_align", "detector.ops.roi_pool"):  # (the package exports functions by these names)
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "exporting", lambda: True)


@pytest.mark.parametrize("kind, mode", MODES)
def test_dense_equals_eager(kind, mode, monkeypatch):
    pooler = make_pooler(kind, mode)
    for seed in range(3):
        features, rois = _inputs(seed)
        eager = pooler(features, rois)
        with monkeypatch.context() as m:
            _as_exported(m)
            dense = pooler(features, rois)
        assert dense.shape == eager.shape
        torch.testing.assert_close(dense, eager, rtol=1e-5, atol=1e-5)


def test_dense_roi_pool_keeps_the_eager_rules_for_nan_and_empty_bins(monkeypatch):
    features, rois = _inputs(1)
    features[0, :, 2:4, 3:6] = float("nan")
    features[1, 0] = -float("inf")
    features[1, 1, 4:6, 6] = float("inf")  # wins its bins, as in the eager op
    rois[3] = torch.tensor([0.0, 1000.0, 1000.0, 1100.0, 1100.0])  # outside the map: empty bins read 0
    for quantization in ("round", "floor"):
        pooler = make_pooler("pool", dict(quantization=quantization))
        eager = pooler(features, rois)
        with monkeypatch.context() as m:
            _as_exported(m)
            dense = pooler(features, rois)
        assert torch.equal(dense.isnan(), eager.isnan()) and not dense.isnan().any()
        assert torch.equal(dense.isposinf(), eager.isposinf()) and dense.isposinf().any()
        torch.testing.assert_close(dense, eager)


@pytest.mark.parametrize("kind, mode", [("align", dict(sampling_ratio=-1, aligned=True, reduction="max",
                                                       sample_layout="interior")),
                                        ("pool", dict(quantization="floor")), ("warp", dict(sampling_ratio=2, reduction="avg"))])
def test_torch_export_runs_the_dense_path(kind, mode):
    pooler = make_pooler(kind, mode)
    features, rois = _inputs(2, images=1)
    program = torch.export.export(pooler, (features, rois), strict=False)
    torch.testing.assert_close(program.module()(features, rois), pooler(features, rois), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind, mode", MODES + [("align", dict(sampling_ratio=0, aligned=True)),
                                                ("align", dict(sampling_ratio=1, aligned=False, reduction="max"))])
def test_dense_equals_eager_on_tall_and_wide_maps_and_boxes_outside(kind, mode, monkeypatch):
    """float64 (the geometry's dtype must follow the map's), maps far from square (the RoIPool table
    needs levels for the longer side), and boxes past every border or wholly outside (clipping)."""
    pooler = make_pooler(kind, mode)
    g = torch.Generator().manual_seed(3)
    for height, width in ((40, 3), (3, 40)):
        features = torch.randn(2, 3, height, width, generator=g, dtype=torch.float64)
        h, w = height * 32.0, width * 32.0
        boxes = torch.tensor([[-100.0, -80.0, 0.6 * w + 0.3, 0.5 * h + 0.7],  # past the top and the left
                              [0.3 * w, 0.4 * h, w + 150.0, h + 90.0],  # past the bottom and the right
                              [-300.0, -300.0, -100.0, -100.0],  # wholly above-left
                              [w + 10.0, 5.0, w + 200.0, 0.9 * h],  # wholly right
                              [0.0, 0.0, w, h], [1.0, 2.0, w - 3.0, h - 5.0]], dtype=torch.float64)
        # float32 RoIs on a float64 map: both operators compute the geometry in the map's dtype.
        rois = torch.cat([torch.tensor([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]], dtype=torch.float64), boxes], 1).float()
        eager = pooler(features, rois)
        with monkeypatch.context() as m:
            _as_exported(m)
            dense = pooler(features, rois)
        assert dense.dtype == eager.dtype == torch.float64
        torch.testing.assert_close(dense, eager, rtol=1e-10, atol=1e-10)


def test_pad_indices_cuts_or_pads_with_minus_one_to_the_length():
    from detector.ops.dense import pad_indices

    keep = torch.tensor([7, 2, 5])
    assert pad_indices(keep, 5).tolist() == [7, 2, 5, -1, -1]  # fewer kept than the length
    assert pad_indices(keep, 2).tolist() == [7, 2]  # more: the first ones, in order
    assert pad_indices(keep, 3).tolist() == [7, 2, 5]
    assert pad_indices(keep[:0], 3).tolist() == [-1, -1, -1]  # nothing kept
    assert pad_indices(keep, 0).tolist() == []
    assert pad_indices(keep.int(), 4).dtype == torch.int32  # the indices' own dtype
