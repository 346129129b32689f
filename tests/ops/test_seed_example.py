"""The seed's worked example, reproduced exactly (slides 101-123; map in tests/fixtures/seed/).

An 800 x 576 image, a VGG16 with 5 pools (stride 32) -> a 25 x 18 feature map, an RoI at
x, y = (300, 210), w, h = (230, 180), pooled to 3 x 3 with 2 x 2 sampling points per bin placed at
1/3 and 2/3 of the bin (the seed's layout), max over the samples.
"""

import csv
from pathlib import Path

import pytest
import torch

from detector.ops import roi_align, roi_align_samples, roi_pool, sample_points
from detector.ops.roi_pool import floor_quantize

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "seed" / "feature_map_18x25.csv"
ROI = torch.tensor([[0.0, 300.0, 210.0, 300.0 + 230.0, 210.0 + 180.0]], dtype=torch.float64)
STRIDE = 32


def load_feature_map(path, hidden_value):
    """[1, 1, 18, 25]; value at row r, column c sits at continuous (c + 0.5, r + 0.5)."""
    rows = list(csv.reader(path.open()))
    return torch.tensor(
        [[float(v) if v.strip() else hidden_value for v in row] for row in rows], dtype=torch.float64
    )[None, None]


@pytest.fixture(scope="module", params=[0.0, 5.0])
def fm(request):
    # Three cells are hidden by a label on the slide; no sample of this RoI may depend on them, so
    # every assertion must hold whatever we fill them with.
    return load_feature_map(FIXTURE, request.param)


def test_feature_map_is_the_slides(fm):
    assert fm.shape == (1, 1, 18, 25)  # 800/32 x 576/32
    assert fm[0, 0, 6, 9] == 0.9  # FM(9.5, 6.5) = 0.9
    assert fm[0, 0, 6, 10] == 0.8 and fm[0, 0, 7, 11] == 0.4  # FM(10.5, 6.5), FM(11.5, 7.5)


def test_sampling_point_coordinates():
    xs, ys = sample_points(ROI[0, 1:].tolist(), 3, 1 / STRIDE, 2, True, sample_layout="interior")
    # X = 9.375 + 2.39 * 1/3 = 10.17, 9.375 + 2.39 * 2/3 = 10.97; Y = 6.563 + 1.875 * 1/3 = 7.19, 7.81
    assert xs[:2].tolist() == pytest.approx([10.17, 10.97], abs=0.005)
    assert ys[:2].tolist() == pytest.approx([7.19, 7.81], abs=0.005)


def test_sample_values_and_max(fm):
    samples = roi_align_samples(fm, ROI, 3, 1 / STRIDE, 2, True, sample_layout="interior")[0, 0]
    assert samples.shape == (6, 6)
    # The seed's bilinear interpolations, to its 3-decimal rounding of the coordinates.
    assert samples[0, 1].item() == pytest.approx(0.436, abs=2e-3)  # (10.97, 7.19)
    assert samples[1, 0].item() == pytest.approx(0.332, abs=2e-3)  # (10.17, 7.81)
    assert samples[1, 1].item() == pytest.approx(0.281, abs=2e-3)  # (10.97, 7.81)
    # The point the seed names first, (10.17, 7.19), from FM 0.9, 0.8, 0.6, 0.2 by hand:
    # x: 0.9*0.326 + 0.8*0.674 = 0.833, 0.6*0.326 + 0.2*0.674 = 0.330; y: 0.833*0.3125 + 0.330*0.6875
    assert samples[0, 0].item() == pytest.approx(0.487, abs=2e-3)
    pooled = roi_align(fm, ROI, 3, 1 / STRIDE, 2, True, reduction="max", sample_layout="interior")[0, 0]
    # "Apply max-pooling on the calculated sampling points", bin by bin.
    torch.testing.assert_close(pooled, samples.view(3, 2, 3, 2).amax(dim=(1, 3)))
    assert pooled[0, 0].item() == pytest.approx(samples[0, 0].item())


def test_floor_roi_pool_cells(fm):
    q = floor_quantize(ROI.float(), (3, 3), 1 / STRIDE)
    assert q[0, 1:].tolist() == [9.0, 6.0, 2.0, 1.0]  # X 9.375->9, Y 6.563->6, bins 7/3->2, 5/3->1
    pooled = roi_pool(fm, ROI, 3, 1 / STRIDE, quantization="floor")[0, 0]
    # Bin (i, j) is cells rows 6+i, columns 9+2j .. 10+2j; column 15 and rows 9-10 are cropped.
    expected = torch.stack([torch.stack([fm[0, 0, 6 + i, 9 + 2 * j: 11 + 2 * j].max() for j in range(3)]) for i in range(3)])
    torch.testing.assert_close(pooled, expected)
    assert pooled.tolist() == [[0.9, 0.7, 0.5], [0.6, 0.4, 1.0], [0.4, 0.5, 0.8]]
