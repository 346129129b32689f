"""The seed's operators in a covering set of their modes (every pair of settings, `pooler_modes.py`), as
one ONNX file with free map size and RoI count, run by onnxruntime, equals the eager operator on maps of
several sizes (the smallest below the output size)."""

from __future__ import annotations

import pytest
import torch

from pooler_modes import COVERING_MODES as MODES, make_pooler

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

MAP_SIZES = [(9, 13), (3, 2), (17, 6)]  # cells at stride 32; the output size is 3 x 4


class EveryMode(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.poolers = torch.nn.ModuleList(make_pooler(kind, mode) for kind, mode in MODES)

    def forward(self, features, rois):
        return tuple(pooler(features, rois) for pooler in self.poolers)


def _inputs(height, width, seed):
    """Two images' maps and 40 RoIs inside their image: random, zero-size, the whole image, on the border."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 5, height, width, generator=g)
    size = torch.tensor([width * 32.0, height * 32.0])
    xy = torch.rand(40, 2, generator=g) * size * 0.9
    wh = torch.rand(40, 2, generator=g) * size * 0.7 + 0.5
    boxes = torch.cat([xy, torch.minimum(xy + wh, size)], 1)
    boxes[0, 2:] = boxes[0, :2]  # zero size
    boxes[1] = torch.cat([torch.zeros(2), size])  # the whole image
    boxes[2, 2:] = size - 1  # to the far border
    batch = torch.randint(2, (40, 1), generator=g).float()
    return features, torch.cat([batch, boxes], 1)


def test_every_pair_of_operator_settings_runs_in_onnxruntime_as_eager(tmp_path):
    model = EveryMode().eval()
    example = _inputs(*MAP_SIZES[0], seed=0)
    dims = ({0: torch.export.Dim("images", min=1, max=8), 2: torch.export.Dim("height", min=2, max=256),
             3: torch.export.Dim("width", min=2, max=256)}, {0: torch.export.Dim("rois", min=1, max=4096)})
    # The max over an adaptive grid reshapes [K, kh, n, H] with n a function of the map size; the shape
    # solver cannot prove the (true) divisibility facts this needs, so they become checks in the program.
    exported = torch.export.export(model, example, dynamic_shapes=dims, strict=False,
                                   prefer_deferred_runtime_asserts_over_guards=True)
    path = tmp_path / "operators.onnx"
    # Without the ONNX optimizer (27 s instead of 65 s here): the operators' translation is what is tested;
    # the model's test (test_onnx_program.py) runs the optimized file the export tool writes.
    torch.onnx.export(exported, input_names=["features", "rois"], dynamo=True, verbose=False,
                      optimize=False).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, (height, width) in enumerate(MAP_SIZES):
        features, rois = _inputs(height, width, seed)
        got = session.run(None, {"features": features.numpy(), "rois": rois.numpy()})
        assert len(got) == len(MODES)
        with torch.no_grad():
            expected = model(features, rois)
        for (kind, mode), out, ref in zip(MODES, got, expected):
            # Other summation orders than the eager op's (dense contractions): float32 rounding only.
            torch.testing.assert_close(torch.from_numpy(out), ref, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, kind=kind, mode=mode: f"{kind} {mode} at {height}x{width}: {m}")
