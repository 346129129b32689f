"""detector.ops._utils: the box formats, the input checks and the small exact helpers, by hand."""

import pytest
import torch

from detector.ops._utils import boxes_to_rois, channels_last_empty, check_roi_inputs, index_dtype, pair, round_half_away


def test_pair():
    assert pair(7) == (7, 7)
    assert pair((3, 5)) == (3, 5) and pair([4, 6]) == (4, 6)
    assert all(type(v) is int for v in pair((torch.tensor(2), 3.0)))


def test_per_image_lists_become_rois_with_their_image_index():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float64)
    a, b = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]), torch.tensor([[9.0, 10, 11, 12]])
    # One image: its boxes, batch index 0 (not an empty result).
    one = boxes_to_rois([a], x)
    assert one.dtype == torch.float64 and one.tolist() == [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8]]
    # Several (a tuple too), an image without boxes in between.
    three = boxes_to_rois((a, torch.zeros(0, 4), b), x, dtype=torch.float32)
    assert three.dtype == torch.float32
    assert three.tolist() == [[0, 1, 2, 3, 4], [0, 5, 6, 7, 8], [2, 9, 10, 11, 12]]
    assert boxes_to_rois([], x).shape == (0, 5) and boxes_to_rois([], x).dtype == torch.float64
    # The boxes take the asked dtype whatever their own (float64 boxes, float32 asked).
    assert boxes_to_rois([a.double()], x, dtype=torch.float32).dtype == torch.float32
    # [K, 5] as given, in the asked dtype (default: the input's).
    rois = torch.tensor([[1.0, 1, 2, 3, 4]])
    assert boxes_to_rois(rois, x).dtype == torch.float64 and boxes_to_rois(rois, x).tolist() == rois.tolist()


def test_box_shapes_are_refused_with_the_shape_seen():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"^each per-image boxes tensor must be \[L, 4\], got \[2, 5\]$"):
        boxes_to_rois([torch.zeros(2, 5)], x)
    with pytest.raises(ValueError, match=r"^each per-image boxes tensor must be \[L, 4\], got \[4\]$"):
        boxes_to_rois([torch.zeros(4)], x)
    with pytest.raises(ValueError, match=r"^boxes must be \[K, 5\] \(batch index, x1, y1, x2, y2\), got \[3, 4\]$"):
        boxes_to_rois(torch.zeros(3, 4), x)
    with pytest.raises(ValueError, match=r"got \[5\]$"):
        boxes_to_rois(torch.zeros(5), x)


def test_input_checks():
    rois = torch.zeros(0, 5)
    check_roi_inputs(torch.zeros(1, 2, 3, 4), rois)  # a map and boxes on one device: fine
    with pytest.raises(ValueError, match=r"^input must be \[N, C, H, W\], got \[2, 3, 4\]$"):
        check_roi_inputs(torch.zeros(2, 3, 4), rois)
    with pytest.raises(ValueError, match=r"^input must be a floating-point tensor, got torch.int64$"):
        check_roi_inputs(torch.zeros(1, 2, 3, 4, dtype=torch.int64), rois)
    with pytest.raises(ValueError, match=r"^boxes are on meta but input is on cpu$"):
        check_roi_inputs(torch.zeros(1, 2, 3, 4), rois.to("meta"))


def test_index_dtype_is_the_smallest_that_holds_the_plane():
    assert [index_dtype(n) for n in (1, 2**8, 2**8 + 1, 2**15, 2**15 + 1, 2**31)] == [
        torch.uint8, torch.uint8, torch.int16, torch.int16, torch.int32, torch.int32,
    ]


def test_round_half_away_is_cs_round():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49999997, -0.49999997, 2.4, -2.6, 0.0, 7.0])
    assert round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -2.0, 0.0, -0.0, 2.0, -3.0, 0.0, 7.0]
    # float64 too, and the float just below 0.5, where floor(|x| + 0.5) would give 1.
    below = torch.nextafter(torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert round_half_away(below).item() == 0.0 and round_half_away(-below).item() == 0.0


def test_channels_last_empty():
    t = channels_last_empty(2, 3, 4, 5, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert t.shape == (2, 3, 4, 5) and t.dtype == torch.bfloat16 and t.device.type == "cpu"
    assert t.is_contiguous(memory_format=torch.channels_last) and t.stride() == (60, 1, 15, 3)
