import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from detector.modeling import BoxCoder


def random_boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights):
    coder = BoxCoder(weights=weights)
    ref, gt = random_boxes(50, 0), random_boxes(50, 1)
    deltas = coder.encode(ref, gt)
    torch.testing.assert_close(coder.decode(deltas, ref), gt, rtol=1e-5, atol=1e-3)


def test_identity_is_zero_delta():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    boxes = random_boxes(10)
    assert coder.encode(boxes, boxes).abs().max() < 1e-6


def test_hand_computed_delta():
    # Reference centred at (50, 50), 20 x 40; target centred at (54, 40), 40 x 40.
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[40.0, 30.0, 60.0, 70.0]])
    gt = torch.tensor([[34.0, 20.0, 74.0, 60.0]])
    expected = torch.tensor([[10 * 4 / 20, 10 * -10 / 40, 5 * math.log(2.0), 0.0]])
    torch.testing.assert_close(coder.encode(ref, gt), expected)


def test_matches_torchvision_reference():
    ours = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    theirs = TVBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref, gt = random_boxes(30, 2), random_boxes(30, 3)
    torch.testing.assert_close(ours.encode(ref, gt), theirs.encode_single(gt, ref))
    deltas = torch.randn(30, 4 * 3)
    torch.testing.assert_close(
        ours.decode(deltas, ref), theirs.decode_single(deltas, ref), rtol=1e-5, atol=1e-4
    )


def test_class_specific_decode_and_clamp():
    coder = BoxCoder()
    ref = random_boxes(4)
    deltas = torch.zeros(4, 8)
    deltas[:, 6] = 1e6  # an absurd dw for class 1 is clamped, not inf
    deltas[:, 7] = -1e6  # an absurd negative dh is not clamped: the box shrinks to its centre
    out = coder.decode(deltas, ref)
    assert out.shape == (4, 8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :4], ref)
    # Class 1's width is exactly the clamp's: the reference width times 1000 / 16, around its centre.
    w_ref, cx = ref[:, 2] - ref[:, 0], (ref[:, 0] + ref[:, 2]) / 2
    torch.testing.assert_close(out[:, 6] - out[:, 4], w_ref * (1000 / 16), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close((out[:, 4] + out[:, 6]) / 2, cx, rtol=1e-5, atol=1e-3)
    assert torch.allclose(out[:, 7] - out[:, 5], torch.zeros(4), atol=1e-3)
    # Just under the clamp nothing changes; torchvision's coder clamps at the same value.
    deltas[:, 6] = math.log(1000 / 16) - 0.01
    torch.testing.assert_close(coder.decode(deltas, ref)[:, 6] - coder.decode(deltas, ref)[:, 4],
                               w_ref * math.exp(math.log(1000 / 16) - 0.01), rtol=1e-5, atol=1e-3)
    big = torch.zeros(4, 4)
    big[:, 2] = 50.0
    tv = TVBoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode_single(big, ref)
    torch.testing.assert_close(coder.decode(big, ref), tv, rtol=1e-5, atol=1e-3)
