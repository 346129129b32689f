"""The embedded default dataset: deterministic synthetic shapes, written to disk as COCO.

Nothing is downloaded. On first use :func:`ensure_synthetic_split` draws the images, saves them as
JPEG files and writes a COCO instances JSON beside them, so the synthetic data goes through exactly
the same loader (:class:`detector.data.coco.CocoDetection`) and the same COCO evaluation as user data.

What an image holds, and why:

* Five classes (:data:`SYNTHETIC_CLASSES`), each a filled shape with a characteristic hue (jittered
  in hue, saturation and brightness), so both colour and shape identify the class.
* A background that is not trivially separable from the objects: a smooth random colour gradient,
  greyish blobs, lines and stripe patches, a few un-annotated *distractor* shapes in grey and brown
  tones (the detector has to learn that shape alone is not enough), and pixel noise over everything.
* Width and height drawn independently (default uniform in [256, 352]), because the model batches
  images of different sizes and pads them.
* 1..``max_objects`` objects whose longest side is log-uniform from ``min_object_size`` up to half the
  shorter image side, so small objects feel the stride-32 quantisation of the RoI pooling grid.
  Placements overlapping an earlier object's box with IoU > 0.1 are redrawn (then skipped), so every
  box describes a mostly visible object.
* Boxes are the tight pixel extent of the drawn shape (computed from its raster mask, not from the
  geometry), as COCO ``[x, y, w, h]`` floats in the pixel-edge convention (a shape covering pixel
  columns 3..7 has ``x = 3, w = 5``).

Determinism: image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, i])`` only, so
the result does not depend on generation order, and the same arguments give byte-identical JSON and
JPEG files (for a given Pillow/libjpeg build). Train and val use different seeds.

Shape shorthand:
    H, W: height and width of one image in pixels.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.ops import box_iou

from detector.errors import ConfigError
from detector.utils.io import atomic_write_json

__all__ = [
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_VERSION",
    "ensure_synthetic_split",
    "generate_synthetic_coco",
]

#: Class names; COCO category id ``i + 1`` (and model label ``i + 1``) is ``SYNTHETIC_CLASSES[i]``.
SYNTHETIC_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring")

#: Bumped whenever the drawing code changes what a given (seed, index) produces, so that
#: :func:`ensure_synthetic_split` regenerates data cached by an older version.
SYNTHETIC_VERSION = 1

# Characteristic hue of each class in degrees: red, green, blue, yellow, magenta. They are at least
# 55 degrees apart, far more than the +-_HUE_JITTER below, so colour alone separates the classes.
_CLASS_HUES_DEG: tuple[float, ...] = (0.0, 120.0, 225.0, 55.0, 300.0)
_HUE_JITTER_DEG = 12.0
# Objects are saturated and bright; clutter is greyish (saturation <= 0.15) or a dark brown, so the
# ranges never overlap and the colour cue stays learnable.
_OBJECT_SATURATION = (0.6, 1.0)
_OBJECT_VALUE = (0.65, 1.0)

_MAX_OVERLAP_IOU = 0.1  # placements overlapping an earlier object's box more than this are redrawn
_PLACEMENT_TRIES = 10  # then the object is skipped, so an image may hold fewer than drawn
_RING_THICKNESS = 0.28  # ring width as a fraction of its diameter: a 12 px ring keeps a visible hole
_CROSS_ARM_HALF_WIDTH = 0.33  # half-width of a cross arm, in units of its half-length

_ANNOTATIONS_NAME = "annotations.json"
_IMAGES_DIR_NAME = "images"
_IMAGE_NAME = re.compile(r"^\d{6}\.jpg$")

# Unit-size polygons centred on the origin (before rotation and scaling).
_SQUARE = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
_TRIANGLE = np.array(
    [(math.cos(a), math.sin(a)) for a in np.deg2rad([90.0, 210.0, 330.0])], dtype=np.float64
)
_a = _CROSS_ARM_HALF_WIDTH
_CROSS = np.array(
    [(-_a, -1), (_a, -1), (_a, -_a), (1, -_a), (1, _a), (_a, _a),
     (_a, 1), (-_a, 1), (-_a, _a), (-1, _a), (-1, -_a), (-_a, -_a)],
    dtype=np.float64,
)  # fmt: skip
del _a
_POLYGONS: dict[str, np.ndarray] = {"square": _SQUARE, "triangle": _TRIANGLE, "cross": _CROSS}


def generate_synthetic_coco(
    root: str | Path,
    *,
    split: str,
    num_images: int,
    seed: int,
    min_image_size: int = 256,
    max_image_size: int = 352,
    max_objects: int = 6,
    min_object_size: int = 12,
    jpeg_quality: int = 95,
) -> tuple[Path, Path]:
    """Draw a synthetic split and write it as COCO: ``root/split/images/*.jpg`` + ``annotations.json``.

    The annotation file is deleted first and written last (atomically), so a generation that is
    interrupted leaves no annotation file and :func:`ensure_synthetic_split` redoes it.

    Args:
        root: Dataset root directory; created if missing.
        split: Split name, e.g. ``"train"``; a single path component.
        num_images: Number of images to draw.
        seed: Seed of this split; image ``i`` is drawn from ``default_rng([seed, i])``.
        min_image_size: Smallest image width/height in pixels.
        max_image_size: Largest image width/height in pixels (inclusive).
        max_objects: Objects per image are drawn uniformly from ``1..max_objects``.
        min_object_size: Smallest object (longest side of its box) in pixels.
        jpeg_quality: JPEG quality of the saved images.

    Returns:
        ``(images_dir, annotations_file)``.

    Raises:
        ConfigError: A parameter is out of range.
    """
    params = _generator_params(
        split=split,
        num_images=num_images,
        seed=seed,
        min_image_size=min_image_size,
        max_image_size=max_image_size,
        max_objects=max_objects,
        min_object_size=min_object_size,
        jpeg_quality=jpeg_quality,
    )
    split_dir = Path(root) / split
    images_dir = split_dir / _IMAGES_DIR_NAME
    ann_file = split_dir / _ANNOTATIONS_NAME
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_file.unlink(missing_ok=True)  # from here on the split counts as incomplete

    file_names = [f"{index:06d}.jpg" for index in range(num_images)]
    # Images left over from an earlier, larger generation would sit beside the new split unlisted.
    wanted = set(file_names)
    for stale in images_dir.iterdir():
        if _IMAGE_NAME.match(stale.name) and stale.name not in wanted:
            stale.unlink()

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, file_name in enumerate(file_names):
        rng = np.random.default_rng([seed, index])
        pixels, objects = _draw_image(
            rng,
            min_image_size=min_image_size,
            max_image_size=max_image_size,
            max_objects=max_objects,
            min_object_size=min_object_size,
        )
        height, width = pixels.shape[:2]
        # 4:4:4 chroma (subsampling=0): with the default 4:2:0 a 12 px object keeps only 6x6 colour
        # samples, smeared with the background, and colour is half of what identifies a class.
        Image.fromarray(pixels).save(
            images_dir / file_name, format="JPEG", quality=jpeg_quality, subsampling=0
        )
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for label, (x0, y0, x1, y1) in objects:
            w, h = float(x1 - x0), float(y1 - y0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [float(x0), float(y0), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )

    coco = {
        "info": {
            "description": "detector synthetic shapes (see detector/data/synthetic.py)",
            "generator": params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SYNTHETIC_CLASSES)
        ],
    }
    atomic_write_json(ann_file, coco)
    return images_dir, ann_file


def ensure_synthetic_split(
    root: str | Path,
    *,
    split: str,
    num_images: int,
    seed: int,
    min_image_size: int = 256,
    max_image_size: int = 352,
    max_objects: int = 6,
    min_object_size: int = 12,
    jpeg_quality: int = 95,
) -> tuple[Path, Path]:
    """Return a synthetic split, generating it only when it is missing, incomplete or stale.

    The split on disk is reused when its ``annotations.json`` exists, its ``info["generator"]`` equals
    the requested parameters (including :data:`SYNTHETIC_VERSION`) and every listed image file
    exists. Anything else (no or unreadable annotation file, other parameters, a deleted image) leads
    to a full regeneration with :func:`generate_synthetic_coco`.

    Args:
        root, split, num_images, seed, min_image_size, max_image_size, max_objects,
            min_object_size, jpeg_quality: As for :func:`generate_synthetic_coco`.

    Returns:
        ``(images_dir, annotations_file)``.

    Raises:
        ConfigError: A parameter is out of range.
    """
    kwargs = dict(
        split=split,
        num_images=num_images,
        seed=seed,
        min_image_size=min_image_size,
        max_image_size=max_image_size,
        max_objects=max_objects,
        min_object_size=min_object_size,
        jpeg_quality=jpeg_quality,
    )
    params = _generator_params(**kwargs)
    split_dir = Path(root) / split
    images_dir = split_dir / _IMAGES_DIR_NAME
    ann_file = split_dir / _ANNOTATIONS_NAME
    if _is_complete(images_dir, ann_file, params):
        return images_dir, ann_file
    return generate_synthetic_coco(root, **kwargs)


def _is_complete(images_dir: Path, ann_file: Path, params: dict[str, Any]) -> bool:
    """Whether ``ann_file`` was written by this generator with ``params`` and its images exist."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            coco = json.load(f)
        generator = coco["info"]["generator"]
        file_names = [image["file_name"] for image in coco["images"]]
    except (OSError, ValueError, KeyError, TypeError):
        # Missing or damaged cache: it is ours to redo, not a user error.
        return False
    return generator == params and all((images_dir / name).is_file() for name in file_names)


def _generator_params(
    *,
    split: str,
    num_images: int,
    seed: int,
    min_image_size: int,
    max_image_size: int,
    max_objects: int,
    min_object_size: int,
    jpeg_quality: int,
) -> dict[str, Any]:
    """Validate the generator parameters and return them as the ``info["generator"]`` dict."""
    if not isinstance(split, str) or not split or split in (".", "..") or "/" in split or "\\" in split:
        raise ConfigError(f"synthetic dataset: split must be a plain directory name, got {split!r}")
    ints = dict(
        num_images=num_images,
        seed=seed,
        min_image_size=min_image_size,
        max_image_size=max_image_size,
        max_objects=max_objects,
        min_object_size=min_object_size,
        jpeg_quality=jpeg_quality,
    )
    for name, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"synthetic dataset: {name} must be an integer, got {value!r}")
    if num_images < 1:
        raise ConfigError(f"synthetic dataset: num_images must be >= 1, got {num_images}")
    if seed < 0:
        raise ConfigError(f"synthetic dataset: seed must be >= 0, got {seed}")
    if not 1 <= min_image_size <= max_image_size:
        raise ConfigError(
            "synthetic dataset: need 1 <= min_image_size <= max_image_size, "
            f"got {min_image_size} and {max_image_size}"
        )
    if max_objects < 1:
        raise ConfigError(f"synthetic dataset: max_objects must be >= 1, got {max_objects}")
    if not 4 <= min_object_size <= min_image_size // 2:
        raise ConfigError(
            "synthetic dataset: min_object_size must be in [4, min_image_size // 2 = "
            f"{min_image_size // 2}], got {min_object_size}"
        )
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"synthetic dataset: jpeg_quality must be in [1, 100], got {jpeg_quality}")
    return {"version": SYNTHETIC_VERSION, "split": split, **{k: int(v) for k, v in ints.items()}}


# --------------------------------------------------------------------------------------------------
# Drawing. Every random number of an image comes from its own ``rng``, drawn in a fixed order.
# --------------------------------------------------------------------------------------------------


def _draw_image(
    rng: np.random.Generator,
    *,
    min_image_size: int,
    max_image_size: int,
    max_objects: int,
    min_object_size: int,
) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int]]]]:
    """Draw one image.

    Returns:
        ``(pixels, objects)``: uint8 ``[H, W, 3]`` RGB pixels, and per object its category id
        (1..5) and tight box ``(x0, y0, x1, y1)`` with exclusive ``x1, y1``.
    """
    width = int(rng.integers(min_image_size, max_image_size + 1))
    height = int(rng.integers(min_image_size, max_image_size + 1))
    image = Image.fromarray(_gradient(rng, height, width))
    _draw_clutter(rng, image, min_object_size)

    max_object_size = min(width, height) // 2
    placed: list[tuple[int, tuple[int, int, int, int], Image.Image, tuple[int, int, int]]] = []
    placed_boxes = torch.zeros((0, 4))  # [M, 4] xyxy, M = objects placed so far
    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_index = int(rng.integers(len(SYNTHETIC_CLASSES)))
        size = _log_uniform_int(rng, min_object_size, max_object_size)
        mask = _shape_mask(rng, SYNTHETIC_CLASSES[class_index], size)
        mask_w, mask_h = mask.size
        # _shape_mask makes the size exact; this keeps the documented range should it ever not.
        if not min_object_size <= max(mask_w, mask_h) <= max_object_size:
            continue
        for _try in range(_PLACEMENT_TRIES):
            x0 = int(rng.integers(0, width - mask_w + 1))
            y0 = int(rng.integers(0, height - mask_h + 1))
            box = (x0, y0, x0 + mask_w, y0 + mask_h)
            if (box_iou(torch.tensor([box], dtype=torch.float32), placed_boxes) <= _MAX_OVERLAP_IOU).all():
                break
        else:
            continue
        colour = _hsv_colour(
            (_CLASS_HUES_DEG[class_index] + rng.uniform(-_HUE_JITTER_DEG, _HUE_JITTER_DEG)) / 360.0,
            rng.uniform(*_OBJECT_SATURATION),
            rng.uniform(*_OBJECT_VALUE),
        )
        placed.append((class_index + 1, box, mask, colour))
        placed_boxes = torch.cat([placed_boxes, torch.tensor([box], dtype=torch.float32)])

    # Paint the largest first. IoU <= 0.1 still lets a small box sit inside a large one; painted
    # later, the large shape would hide the small one completely. Largest-first means an object is
    # only ever overlapped by smaller ones, which cover at most ~20% of its box (IoU <= 0.1).
    placed.sort(key=lambda p: -(p[1][2] - p[1][0]) * (p[1][3] - p[1][1]))  # stable: ties keep order
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    for label, box, mask, colour in placed:
        image.paste(colour, box[:2], mask)
        objects.append((label, box))

    # Sensor-like noise over everything (objects included), so flat colour is not a give-away.
    sigma = rng.uniform(2.0, 8.0)
    noisy = np.asarray(image, dtype=np.float32)
    noisy += rng.standard_normal(noisy.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8), objects


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Bilinear blend of four random low-saturation corner colours; uint8 ``[H, W, 3]``."""
    base_hue = rng.uniform()
    corners = np.array(
        [
            _hsv_colour((base_hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.9))
            for _ in range(4)
        ],
        dtype=np.float32,
    ).reshape(2, 2, 3)  # [top/bottom, left/right, RGB]
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    top = corners[0, 0] * (1 - xs) + corners[0, 1] * xs  # [1, W, 3]
    bottom = corners[1, 0] * (1 - xs) + corners[1, 1] * xs
    return (top * (1 - ys) + bottom * ys + 0.5).astype(np.uint8)


def _draw_clutter(rng: np.random.Generator, image: Image.Image, min_object_size: int) -> None:
    """Draw the un-annotated background clutter onto ``image`` in place."""
    width, height = image.size
    draw = ImageDraw.Draw(image)

    for _ in range(int(rng.integers(2, 9))):  # greyish blobs
        w = int(rng.integers(8, max(9, width // 3)))
        h = int(rng.integers(8, max(9, height // 3)))
        x0 = int(rng.integers(-w // 2, width - w // 2))
        y0 = int(rng.integers(-h // 2, height - h // 2))
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=_grey(rng))

    for _ in range(int(rng.integers(1, 7))):  # lines
        points = rng.uniform(0, 1, size=4) * (width, height, width, height)
        draw.line([tuple(points[:2]), tuple(points[2:])], fill=_grey(rng), width=int(rng.integers(1, 5)))

    for _ in range(int(rng.integers(0, 3))):  # patches of parallel stripes
        w = int(rng.integers(width // 6, width // 2 + 1))
        h = int(rng.integers(height // 6, height // 2 + 1))
        stripes = Image.new("L", (w, h), 0)
        stripes_draw = ImageDraw.Draw(stripes)
        angle = rng.uniform(0, math.pi)
        spacing = rng.uniform(5, 16)
        line_width = int(rng.integers(1, 4))
        dx, dy = math.cos(angle), math.sin(angle)  # stripe direction
        reach = w + h  # long enough to cross the whole patch from any offset
        for k in range(-int(reach / spacing), int(reach / spacing) + 1):
            cx, cy = w / 2 - dy * k * spacing, h / 2 + dx * k * spacing  # step along the normal
            stripes_draw.line(
                [(cx - dx * reach, cy - dy * reach), (cx + dx * reach, cy + dy * reach)],
                fill=255,
                width=line_width,
            )
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        image.paste(_grey(rng), (x0, y0), stripes)

    # Distractors: the same kinds of shapes, but grey or brown, never annotated. The detector must
    # learn that a shape without its class colour is background.
    max_size = max(min_object_size, min(width, height) // 6)
    for _ in range(int(rng.integers(0, 4))):
        mask = _shape_mask(
            rng,
            SYNTHETIC_CLASSES[int(rng.integers(len(SYNTHETIC_CLASSES)))],
            _log_uniform_int(rng, min(10, min_object_size), max_size),
        )
        if rng.uniform() < 0.5:
            colour = _grey(rng)
        else:  # brown: orange hue, but darker and less saturated than any object
            colour = _hsv_colour(rng.uniform(20, 40) / 360.0, rng.uniform(0.35, 0.55), rng.uniform(0.25, 0.45))
        x0 = int(rng.integers(0, max(1, width - mask.size[0] + 1)))
        y0 = int(rng.integers(0, max(1, height - mask.size[1] + 1)))
        image.paste(colour, (x0, y0), mask)


def _shape_mask(rng: np.random.Generator, shape: str, size: int) -> Image.Image:
    """Rasterise ``shape`` with longest side ``size`` px; an ``"L"`` mask cropped to the shape's extent.

    Cropping to the non-zero pixels is what makes the boxes tight: the box is measured on the raster,
    whatever rounding the polygon fill did.
    """
    if shape in ("circle", "ring"):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        draw.ellipse((0, 0, size - 1, size - 1), fill=255)
        if shape == "ring":
            inset = max(2.0, _RING_THICKNESS * size)
            draw.ellipse((inset, inset, size - 1 - inset, size - 1 - inset), fill=0)
    else:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        unit = _POLYGONS[shape] @ rotation.T
        unit -= unit.min(axis=0)
        unit /= unit.max()
        # Scaling the extent to `size - 1` makes the longest side span `size` pixels, except when
        # the fill rule leaves a sharp vertex's boundary pixel out (~5% of rotations): then stretch
        # by a fraction of a pixel so that sizes stay exact (the minimum size matters).
        for stretch in (0.0, 0.4, 0.8):
            points = unit * (size - 1 + stretch)
            mask_w, mask_h = (int(math.ceil(e)) + 1 for e in points.max(axis=0))
            mask = Image.new("L", (mask_w, mask_h), 0)
            ImageDraw.Draw(mask).polygon([tuple(p) for p in points], fill=255)
            bbox = mask.getbbox()
            if bbox is not None and max(bbox[2] - bbox[0], bbox[3] - bbox[1]) == size:
                break
    bbox = mask.getbbox()
    assert bbox is not None, "a shape of >= 4 px always covers some pixels"
    return mask.crop(bbox)


def _log_uniform_int(rng: np.random.Generator, low: int, high: int) -> int:
    """An integer log-uniform in ``[low, high]``: as many small objects per octave as large ones."""
    if high <= low:
        return low
    return int(min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high)))))))


def _grey(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random greyish colour (saturation <= 0.15) for clutter."""
    return _hsv_colour(rng.uniform(), rng.uniform(0.0, 0.15), rng.uniform(0.2, 0.9))


def _hsv_colour(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    """HSV in [0, 1] (hue wraps) to an 8-bit RGB tuple."""
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, saturation, value)
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


# The record a call writes as info["generator"], for readers that check a split on disk without
# drawing it (detector.data.generated) and so compare exactly what the staleness test compares.
ensure_synthetic_split.recorded_params = _generator_params  # type: ignore[attr-defined]
