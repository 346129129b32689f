"""Images as a viewer shows them: EXIF orientation, grayscale, RGBA, palette, 16-bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detector.data.image_io import image_size, read_rgb
from detector.errors import DatasetError


def test_exif_orientation_is_applied_and_sizes_agree(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # a red left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    pixels = read_rgb(tmp_path / "phone.jpg")
    assert pixels.shape == (40, 20, 3) and image_size(tmp_path / "phone.jpg") == (20, 40)
    assert pixels[:10, :, 0].mean() > 200 and pixels[-10:, :, 0].mean() < 50  # left edge is now the top


@pytest.mark.parametrize("mode,value", [("L", 128), ("RGBA", (10, 20, 30, 0)), ("P", 3), ("I;16", 65535)])
def test_modes_come_out_rgb_uint8(tmp_path, mode, value):
    img = Image.new(mode, (8, 6), value)
    if mode == "P":
        img.putpalette([0, 0, 0] * 3 + [200, 100, 50] + [0, 0, 0] * 252)
    img.save(tmp_path / "x.png")
    pixels = read_rgb(tmp_path / "x.png")
    assert pixels.shape == (6, 8, 3) and pixels.dtype == np.uint8
    expected = {"L": (128, 128, 128), "RGBA": (10, 20, 30), "P": (200, 100, 50), "I;16": (255, 255, 255)}[mode]
    assert tuple(pixels[0, 0]) == expected


def test_unreadable_and_missing(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DatasetError, match=r"bad\.jpg: cannot read image"):
        read_rgb(tmp_path / "bad.jpg")
    with pytest.raises(DatasetError, match=r"gone\.jpg: image file not found"):
        image_size(tmp_path / "gone.jpg")
