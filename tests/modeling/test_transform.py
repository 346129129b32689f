"""DetectionTransform: the resize rule in training and at test (``test_scale``), and its bad values."""

from __future__ import annotations

import pytest
import torch

from detector.errors import ConfigError
from detector.modeling import DetectionTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make(**kw) -> DetectionTransform:
    return DetectionTransform(**{"min_size": 256, "max_size": 480, "pixel_mean": MEAN, "pixel_std": STD, **kw})


def test_training_uses_the_training_size_and_eval_the_scaled_one():
    t = make(test_scale=1.25)
    assert t.train().target_size(300, 400) == (256, 341)  # 400 * 256 / 300 = 341.33
    assert t.eval().target_size(300, 400) == (320, 427)  # 400 * 320 / 300 = 426.67
    # The longer side's cap scales too: 480 * 1.25 = 600, so a 1:3 image is capped at 600 wide.
    assert t.eval().target_size(200, 600) == (200, 600)
    assert t.train().target_size(200, 600) == (160, 480)
    assert (t.test_min_size, t.test_max_size) == (320, 600)


def test_scale_one_tests_at_the_training_size():
    t = make()
    assert t.test_scale == 1.0
    for h, w in [(300, 400), (123, 457), (1000, 90)]:
        assert t.eval().target_size(h, w) == t.train().target_size(h, w)


def test_multi_scale_training_tests_at_the_first_size_times_the_scale():
    t = make(min_size=(224, 256, 288), test_scale=1.5).eval()
    assert t.target_size(224, 224) == (336, 336)


def test_eval_boxes_come_back_in_input_pixels():
    t = make(test_scale=1.25).eval()
    images = [torch.rand(3, 300, 400)]
    batch, _ = t(images)
    assert batch.image_sizes == [(320, 427)] and batch.tensors.shape[-2:] == (320, 448)  # padded to 32
    det = [{"boxes": torch.tensor([[32.0, 64.0, 320.0, 320.0]])}]
    out = t.postprocess(det, batch.image_sizes, [(300, 400)])
    torch.testing.assert_close(out[0]["boxes"], torch.tensor([[32 * 400 / 427, 60.0, 320 * 400 / 427, 300.0]]))


@pytest.mark.parametrize("bad", [0, -1.0, 9.0, True, "1.25", None])
def test_bad_test_scale_is_one_line(bad):
    with pytest.raises(ConfigError, match="test_scale must be a number"):
        make(test_scale=bad)
