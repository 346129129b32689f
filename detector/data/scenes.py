"""A second, independent dataset generator: objects pasted on photographs or procedural textures.

The defaults of this project must be measured on data they were not chosen on (DEVELOPERS.md). The
embedded dataset (:mod:`detector.data.synthetic`) is one distribution; this module draws others, and
shares no drawing code with it on purpose, so a recipe that only exploits the quirks of the
embedded generator (its hues, its clutter, its object placement) gets found out. It writes the same
on-disk format (COCO instances JSON + JPEG), so it goes through the same loader and evaluator as user
data.

How an image is drawn, and what differs from the embedded generator:

* Background: a random crop of one of scikit-image's bundled photographs (``skimage.data``: an
  astronaut, a cat, coffee, a rocket, coins, bricks, grass, gravel, ... shipped inside the package,
  no download), rescaled and colour-shifted; or a procedural texture (sums of random sinusoids and
  smoothed noise); ``background="mixed"`` picks one per image.
* Classes: ``num_classes`` (1..20) combinations of a silhouette (ellipse, rectangle, diamond, star,
  hexagon, crescent, plus, arrow, C-shape, L-shape) and a fill (solid or striped) with a base hue.
  Several classes share a hue, or a silhouette, so neither cue alone separates them.
* Class frequencies follow a Zipf law ``p(k) ~ 1 / k**imbalance`` (0 = balanced).
* Object sizes: the longest side is log-uniform in ``[min_object_size, max_object_size]``, given as
  fractions of the image's shorter side, so "mostly small" and "mostly large" are parameters.
* Objects may overlap (``max_overlap``, the IoU allowed with earlier boxes): later ones occlude
  earlier ones. A box is the extent of the *visible* pixels (as VOC and COCO annotate); an object
  with less than ``min_visible`` of its area visible is written as a crowd region (``iscrowd=1``), so
  neither training nor the COCO evaluation counts it.
* Shapes are rasterised from implicit functions on a 2x supersampled grid (anti-aliased edges) and
  alpha-composited with per-object lighting; the JPEG quality varies per image.

Determinism: image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, 7919, i])`` only;
the same arguments give the same files (for a given Pillow/libjpeg and scikit-image build).

Written by hand because no library generates detection data with these controls; the photographs
come from scikit-image (an optional dependency: ``pip install -e ".[benchmarks]"``).

Shape shorthand:
    H, W: height and width of one image in pixels.
    h, w: height and width of one object's bounding square in pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detector.errors import ConfigError
from detector.utils.io import atomic_write_json

__all__ = ["SCENES_VERSION", "SCENE_SILHOUETTES", "ensure_scenes_split", "scene_class_names"]

#: Bumped whenever the drawing changes what a given (parameters, seed, index) produces.
SCENES_VERSION = 1

SCENE_SILHOUETTES: tuple[str, ...] = (
    "ellipse", "rectangle", "diamond", "star", "hexagon", "crescent", "plus", "arrow", "cshape", "lshape",
)  # fmt: skip
# Base hues (degrees) of the classes: class k gets silhouette k % 10 and hue _HUES[(k * 3) % 7], so
# classes share hues and silhouettes in a pattern that is neither one-to-one.
_HUES = (0.0, 35.0, 110.0, 175.0, 215.0, 270.0, 320.0)
_PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "coins", "brick", "grass", "gravel", "camera",
    "immunohistochemistry", "hubble_deep_field", "moon", "clock", "page",
)  # fmt: skip
_BACKGROUNDS = ("photo", "texture", "mixed")
_ANNOTATIONS_NAME = "annotations.json"
_IMAGES_DIR_NAME = "images"
_PLACEMENT_TRIES = 20


def scene_class_names(num_classes: int) -> list[str]:
    """Names of the first ``num_classes`` classes, e.g. ``"red_star"``, ``"striped_teal_plus"``."""
    names = []
    for k in range(num_classes):
        silhouette, hue, striped = _class_spec(k)
        hue_name = {0.0: "red", 35.0: "orange", 110.0: "green", 175.0: "teal", 215.0: "blue",
                    270.0: "violet", 320.0: "pink"}[hue]  # fmt: skip
        names.append(("striped_" if striped else "") + f"{hue_name}_{silhouette}")
    return names


def _class_spec(k: int) -> tuple[str, float, bool]:
    # Classes 10..19 repeat the silhouettes of 0..9 with stripes and another hue.
    return SCENE_SILHOUETTES[k % 10], _HUES[(k * 3 + k // 10) % 7], k >= 10


def ensure_scenes_split(
    root: str | Path,
    *,
    split: str,
    num_images: int,
    seed: int,
    num_classes: int = 8,
    imbalance: float = 0.0,
    min_image_size: int = 320,
    max_image_size: int = 480,
    min_objects: int = 1,
    max_objects: int = 8,
    min_object_size: float = 0.05,
    max_object_size: float = 0.5,
    max_overlap: float = 0.1,
    min_visible: float = 0.4,
    background: str = "mixed",
) -> tuple[Path, Path]:
    """Return ``root/split/{images, annotations.json}``, drawing the split when missing or stale.

    Args:
        root: Dataset root directory; created if missing.
        split: Split name (a plain directory name).
        num_images: Number of images.
        seed: Seed of the split (train and val use different seeds).
        num_classes: K, 1..20.
        imbalance: Zipf exponent of the class frequencies (0 = balanced).
        min_image_size, max_image_size: Range of the image width and height (drawn independently), px.
        min_objects, max_objects: Objects drawn per image (uniform, inclusive; some may not fit).
        min_object_size, max_object_size: Range of an object's longest side, as fractions of the
            image's shorter side (log-uniform).
        max_overlap: Largest IoU a new object's box may have with an earlier one (occlusion).
        min_visible: Objects with a smaller visible fraction of their area become crowd regions.
        background: ``"photo"``, ``"texture"`` or ``"mixed"``.

    Returns:
        ``(images_dir, annotations_file)``.

    Raises:
        ConfigError: A parameter is out of range, or scikit-image is missing for photo backgrounds.
    """
    params = _params(**{k: v for k, v in locals().items() if k != "root"})
    split_dir = Path(root) / split
    images_dir, ann_file = split_dir / _IMAGES_DIR_NAME, split_dir / _ANNOTATIONS_NAME
    try:
        with open(ann_file, encoding="utf-8") as f:
            coco = json.load(f)
        if coco["info"]["generator"] == params and all(
            (images_dir / im["file_name"]).is_file() for im in coco["images"]
        ):
            return images_dir, ann_file
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing or damaged cache: ours to redo
    photos = _load_photos() if background != "texture" else []
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_file.unlink(missing_ok=True)  # the split counts as incomplete until the JSON is written
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, 7919, index])
        pixels, objects = _draw_scene(rng, photos, params)
        file_name = f"{index:06d}.jpg"
        Image.fromarray(pixels).save(
            images_dir / file_name, format="JPEG", quality=int(rng.integers(75, 96)), subsampling=0
        )
        height, width = pixels.shape[:2]
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for label, (x0, y0, x1, y1), crowd in objects:
            w, h = float(x1 - x0), float(y1 - y0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": label,
                "bbox": [float(x0), float(y0), w, h], "area": w * h, "iscrowd": int(crowd),
            })  # fmt: skip
    coco = {
        "info": {"description": "detector scenes (see detector/data/scenes.py)", "generator": params},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "scene"}
            for k, name in enumerate(scene_class_names(num_classes))
        ],
    }
    atomic_write_json(ann_file, coco)
    return images_dir, ann_file


def _params(**p: Any) -> dict[str, Any]:
    split = p["split"]
    if not isinstance(split, str) or not split or split in (".", "..") or "/" in split or "\\" in split:
        raise ConfigError(f"scenes dataset: split must be a plain directory name, got {split!r}")
    for key in ("num_images", "seed", "num_classes", "min_image_size", "max_image_size",
                "min_objects", "max_objects"):  # fmt: skip
        if isinstance(p[key], bool) or not isinstance(p[key], (int, np.integer)):
            raise ConfigError(f"scenes dataset: {key} must be an integer, got {p[key]!r}")
        p[key] = int(p[key])
    for key in ("imbalance", "min_object_size", "max_object_size", "max_overlap", "min_visible"):
        p[key] = float(p[key])
    checks = [
        (p["num_images"] >= 1, "num_images must be >= 1"),
        (p["seed"] >= 0, "seed must be >= 0"),
        (1 <= p["num_classes"] <= 20, "num_classes must be in 1..20"),
        (p["imbalance"] >= 0, "imbalance must be >= 0"),
        (32 <= p["min_image_size"] <= p["max_image_size"], "need 32 <= min_image_size <= max_image_size"),
        (1 <= p["min_objects"] <= p["max_objects"], "need 1 <= min_objects <= max_objects"),
        (0 < p["min_object_size"] <= p["max_object_size"] <= 1, "need 0 < min_object_size <= max_object_size <= 1"),
        (0 <= p["max_overlap"] <= 1 and 0 <= p["min_visible"] <= 1, "max_overlap and min_visible must be in [0, 1]"),
        (p["background"] in _BACKGROUNDS, f"background must be one of {', '.join(_BACKGROUNDS)}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"scenes dataset: {message} (got {p})")
    return {"version": SCENES_VERSION, **p}


def _load_photos() -> list[np.ndarray]:
    try:
        from skimage import data as skdata
    except ImportError:
        raise ConfigError(
            "scenes dataset: photo backgrounds need scikit-image (pip install -e \".[benchmarks]\"), "
            "or use background=texture"
        ) from None
    photos = []
    for name in _PHOTOS:
        a = np.asarray(getattr(skdata, name)())
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        photos.append(np.ascontiguousarray(a[..., :3]).astype(np.uint8))
    return photos


# --------------------------------------------------------------------------------------------------
# Drawing: every random number of an image comes from its own rng.
# --------------------------------------------------------------------------------------------------


def _draw_scene(rng: np.random.Generator, photos: list[np.ndarray], p: dict[str, Any]):
    width = int(rng.integers(p["min_image_size"], p["max_image_size"] + 1))
    height = int(rng.integers(p["min_image_size"], p["max_image_size"] + 1))
    kind = p["background"] if p["background"] != "mixed" else ("photo", "texture")[int(rng.integers(2))]
    canvas = _photo_background(rng, photos, height, width) if kind == "photo" else _texture(rng, height, width)
    # owner[y, x]: index of the object on top at that pixel (-1: background), for visible extents.
    owner = np.full((height, width), -1, dtype=np.int32)
    freq = 1.0 / np.arange(1, p["num_classes"] + 1) ** p["imbalance"]
    freq /= freq.sum()  # a fixed order: class 1 is the most common, class K the rarest
    short = min(height, width)
    placed: list[tuple[int, np.ndarray, float]] = []  # (label, box xyxy, full area)
    for _ in range(int(rng.integers(p["min_objects"], p["max_objects"] + 1))):
        label = int(rng.choice(p["num_classes"], p=freq)) + 1
        lo, hi = math.log(p["min_object_size"] * short), math.log(p["max_object_size"] * short)
        size = max(6, int(round(math.exp(rng.uniform(lo, hi)))))
        size = min(size, short)
        alpha = _silhouette(rng, _class_spec(label - 1)[0], size)
        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs) == 0:
            continue
        for _try in range(_PLACEMENT_TRIES):
            x = int(rng.integers(0, width - size + 1))
            y = int(rng.integers(0, height - size + 1))
            box = np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], dtype=np.float64)
            if all(_iou(box, other) <= p["max_overlap"] for _, other, _ in placed):
                break
        else:
            continue
        _paint(rng, canvas, alpha, x, y, _class_spec(label - 1))
        region = owner[y:y + size, x:x + size]
        region[alpha > 0.5] = len(placed)
        placed.append((label, box, float((alpha > 0.5).sum())))
    # Global lighting and sensor noise over the finished scene.
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1.0 + 0.25 * rng.uniform(-1, 1) * (gx / width - 0.5) + 0.25 * rng.uniform(-1, 1) * (gy / height - 0.5)
    canvas = canvas * light[..., None] + rng.normal(0, rng.uniform(2, 9), canvas.shape)
    pixels = np.clip(canvas, 0, 255).astype(np.uint8)
    objects = []
    for index, (label, _box, area) in enumerate(placed):
        vy, vx = np.nonzero(owner == index)
        if len(vx) == 0:
            continue  # fully hidden: nothing to see, nothing to annotate
        visible_box = (int(vx.min()), int(vy.min()), int(vx.max()) + 1, int(vy.max()) + 1)
        objects.append((label, visible_box, len(vx) / area < p["min_visible"]))
    return pixels, objects


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _photo_background(rng, photos, height, width) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    # A crop of random size and aspect, resized to the image: scales from 0.5x to 2x of the photo.
    ch = int(rng.integers(max(16, ph // 3), ph + 1))
    cw = int(min(pw, max(16, round(ch * width / height * rng.uniform(0.8, 1.25)))))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw]).resize((width, height), Image.BILINEAR)
    out = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    # Colour shift and contrast change, so the same photo never looks the same twice.
    return (out - 128.0) * rng.uniform(0.6, 1.1) + 128.0 + rng.uniform(-25, 25, size=3)


def _texture(rng, height, width) -> np.ndarray:
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.zeros((height, width, 3), dtype=np.float32) + rng.uniform(60, 190, size=3)
    for _ in range(int(rng.integers(3, 7))):
        freq = rng.uniform(0.01, 0.15)
        angle = rng.uniform(0, math.pi)
        wave = np.sin(freq * (gx * math.cos(angle) + gy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
        out += wave[..., None] * rng.uniform(-30, 30, size=3)
    # Blocky noise upsampled: blobs of every size a detector might mistake for an object.
    for cell in (8, 32):
        small = rng.normal(0, 20, size=(height // cell + 2, width // cell + 2, 3)).astype(np.float32)
        up = np.asarray(Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize(
            ((width // cell + 2) * cell, (height // cell + 2) * cell), Image.BICUBIC), dtype=np.float32)
        out += up[:height, :width] - 128.0
    return out


def _silhouette(rng, name: str, size: int) -> np.ndarray:
    """Alpha mask [h, w] in [0, 1] of a rotated, aspect-jittered silhouette filling a size x size square."""
    n = 2 * size  # 2x supersampling
    t = (np.arange(n, dtype=np.float64) + 0.5) / n * 2 - 1
    v, u = np.meshgrid(t, t, indexing="ij")
    angle = rng.uniform(-math.pi, math.pi) if name not in ("rectangle", "lshape") else rng.uniform(-0.4, 0.4)
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * u + sa * v, -sa * u + ca * v
    aspect = rng.uniform(0.7, 1.0)
    u, v = u / 0.95, v / (0.95 * aspect)
    r, th = np.hypot(u, v), np.arctan2(v, u)
    if name == "ellipse":
        m = r <= 1
    elif name == "rectangle":
        m = (np.abs(u) <= 0.9) & (np.abs(v) <= 0.6)
    elif name == "diamond":
        m = np.abs(u) + np.abs(v) <= 1
    elif name == "star":
        m = r <= 0.45 + 0.4 * np.cos(5 * th) ** 2
    elif name == "hexagon":
        m = np.max([np.abs(u * math.cos(a) + v * math.sin(a)) for a in np.arange(6) * math.pi / 3], axis=0) <= 0.85
    elif name == "crescent":
        m = (r <= 1) & (np.hypot(u - 0.45, v) > 0.75)
    elif name == "plus":
        m = ((np.abs(u) <= 0.25) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.25) & (np.abs(u) <= 1))
    elif name == "arrow":
        m = ((np.abs(v) <= 0.2) & (u >= -1) & (u <= 0.2)) | ((u > 0.2) & (np.abs(v) <= (1 - u) * 0.8))
    elif name == "cshape":
        m = (r <= 1) & (r >= 0.55) & ~((u > 0) & (np.abs(v) < 0.35))
    else:  # lshape
        m = ((u >= -0.8) & (u <= -0.2) & (np.abs(v) <= 0.9)) | ((v >= 0.3) & (v <= 0.9) & (u >= -0.8) & (u <= 0.8))
    return m.reshape(size, 2, size, 2).mean(axis=(1, 3)).astype(np.float32)


def _paint(rng, canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, spec: tuple[str, float, bool]) -> None:
    _, hue, striped = spec
    size = alpha.shape[0]
    hue = (hue + rng.uniform(-10, 10)) % 360
    colour = _hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0))
    fill = np.broadcast_to(colour, (size, size, 3)).astype(np.float32)
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Per-object shading: a linear light ramp, so a flat colour is not the only cue.
    shade = 1.0 + 0.3 * ((gx / size - 0.5) * rng.uniform(-1, 1) + (gy / size - 0.5) * rng.uniform(-1, 1))
    fill = fill * shade[..., None]
    if striped:
        period = max(3.0, size / rng.uniform(3, 6))
        stripes = (np.floor((gx + gy) / period) % 2 == 0)[..., None]
        fill = np.where(stripes, fill, fill * 0.35 + 160)
    region = canvas[y:y + size, x:x + size]
    a = alpha[..., None]
    region[...] = a * fill + (1 - a) * region


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    c = v * s
    hp = h / 60.0
    xx = c * (1 - abs(hp % 2 - 1))
    r, g, b = [(c, xx, 0), (xx, c, 0), (0, c, xx), (0, xx, c), (xx, 0, c), (c, 0, xx)][int(hp) % 6]
    return np.array([r + v - c, g + v - c, b + v - c], dtype=np.float32) * 255.0


# The record a call writes as info["generator"], for readers that check a split on disk without
# drawing it (detector.data.generated) and so compare exactly what the staleness test compares.
ensure_scenes_split.recorded_params = _params  # type: ignore[attr-defined]
