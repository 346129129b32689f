import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detector.modeling.rpn import AnchorGenerator


def test_count_order_and_shapes():
    gen = AnchorGenerator(sizes=[32, 64], aspect_ratios=[0.5, 1.0, 2.0], stride=32)
    anchors = gen((18, 25))
    assert gen.num_anchors_per_location == 6
    assert anchors.shape == (18 * 25 * 6, 4)
    # Location-major: the first 6 anchors share the centre of cell (0, 0), i.e. (16, 16).
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    torch.testing.assert_close(centres[:6], torch.full((6, 2), 16.0))
    # The 7th anchor is at cell (0, 1): x moved by one stride.
    torch.testing.assert_close(centres[6], torch.tensor([48.0, 16.0]))
    # Last location: cell (17, 24).
    torch.testing.assert_close(centres[-1], torch.tensor([24.5 * 32, 17.5 * 32]))


def test_area_and_aspect_ratio():
    gen = AnchorGenerator(sizes=[64], aspect_ratios=[0.5, 2.0], stride=16)
    a = gen((1, 1))
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    torch.testing.assert_close(w * h, torch.full((2,), 64.0 * 64))
    torch.testing.assert_close(h / w, torch.tensor([0.5, 2.0]))


def test_matches_torchvision_with_zero_offset():
    sizes, ratios = (32, 64, 128), (1.0,)
    ours = AnchorGenerator(sizes=sizes, aspect_ratios=ratios, stride=16, offset=0.0)((5, 7))
    tv = TVAnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    images = ImageList(torch.zeros(1, 3, 80, 112), [(80, 112)])
    theirs = tv(images, [torch.zeros(1, 8, 5, 7)])[0]
    torch.testing.assert_close(ours, theirs)
