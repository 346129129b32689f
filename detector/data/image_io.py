"""Reading images the way a photo viewer shows them: EXIF orientation, any mode, 8-bit RGB out.

Every dataset format and ``tools/infer.py`` read pixels through :func:`read_rgb`, so a phone photo
taken upright is upright for training, evaluation and inference alike (labelling tools draw boxes
on the EXIF-rotated view). Pillow does the decoding and ``ImageOps.exif_transpose`` the rotation;
only the 16-bit rescale is ours, because Pillow's ``I;16 -> RGB`` conversion clips at 255 instead of
scaling.

Shape shorthand:
    H, W: height and width of one image in pixels, after the EXIF rotation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from detector.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "image_size", "read_rgb"]

# Suffixes of the images a folder or a glob picks up (as Ultralytics' IMG_FORMATS, lower case).
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")

_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# EXIF orientations 5..8 are rotations by 90 or 270 degrees (with or without a mirror): width and
# height swap.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read any image Pillow can decode as uint8 ``[H, W, 3]`` RGB, EXIF orientation applied.

    Grayscale, palette (with or without transparency), RGBA (alpha dropped), CMYK and 16-bit images
    are converted; 16-bit values are rescaled to 8 bits.

    Raises:
        DatasetError: The file is missing or cannot be decoded (one line naming the file).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            # In place: without it Pillow returns a copy of every image, rotated or not (a full
            # extra copy per sample on the data-loading path).
            ImageOps.exif_transpose(img, in_place=True)
            if img.mode in _SIXTEEN_BIT_MODES:
                gray = np.asarray(img, dtype=np.float32) / 257.0
                img = Image.fromarray(np.clip(gray + 0.5, 0, 255).astype(np.uint8))  # "L"
            elif img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # P -> RGB directly warns about byte transparency
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # Pillow raises OSError for truncated/undecodable files (UnidentifiedImageError is one) and
        # SyntaxError from some plugin parsers.
        raise DatasetError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` as :func:`read_rgb` will return it, from the header only (no decoding).

    Raises:
        DatasetError: The file is missing or is not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
