"""Tests of the embedded synthetic dataset: determinism, box validity, and the on-disk cache."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.data import CocoDetection, SYNTHETIC_CLASSES, ensure_synthetic_split, generate_synthetic_coco
from detector.data import synthetic
from detector.errors import ConfigError

NUM_IMAGES = 8


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_synthetic_coco(tmp_path_factory.mktemp("syn"), split="train", num_images=NUM_IMAGES, seed=0)


def _load(ann_file: Path) -> dict:
    return json.loads(ann_file.read_text())


def _files(images_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(images_dir.iterdir())}


def test_same_seed_gives_identical_bytes(split, tmp_path):
    images_dir, ann_file = split
    images_dir2, ann_file2 = generate_synthetic_coco(tmp_path, split="train", num_images=NUM_IMAGES, seed=0)
    assert ann_file.read_bytes() == ann_file2.read_bytes()
    assert _files(images_dir) == _files(images_dir2)
    assert len(_files(images_dir)) == NUM_IMAGES


def test_image_does_not_depend_on_generation_order(split, tmp_path):
    # Image i is drawn from default_rng([seed, i]) only: a shorter split is a prefix of a longer one.
    images_dir, ann_file = split
    short_dir, short_ann = generate_synthetic_coco(tmp_path, split="train", num_images=3, seed=0)
    assert _files(short_dir) == {k: v for k, v in _files(images_dir).items() if int(k[:6]) < 3}
    long_anns = [a for a in _load(ann_file)["annotations"] if a["image_id"] <= 3]
    assert _load(short_ann)["annotations"] == long_anns


def test_different_seeds_differ(split, tmp_path):
    images_dir, ann_file = split
    images_dir2, ann_file2 = generate_synthetic_coco(tmp_path, split="val", num_images=NUM_IMAGES, seed=1)
    assert _load(ann_file)["annotations"] != _load(ann_file2)["annotations"]
    assert all(a != b for a, b in zip(_files(images_dir).values(), _files(images_dir2).values()))


def test_coco_structure(split):
    images_dir, ann_file = split
    coco = _load(ann_file)
    assert coco["info"]["generator"] == {
        "version": synthetic.SYNTHETIC_VERSION, "split": "train", "num_images": NUM_IMAGES, "seed": 0,
        "min_image_size": 256, "max_image_size": 352, "max_objects": 6, "min_object_size": 12,
        "jpeg_quality": 95,
    }  # fmt: skip
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]
    assert tuple(c["name"] for c in coco["categories"]) == SYNTHETIC_CLASSES
    assert len(set(SYNTHETIC_CLASSES)) == 5
    assert {c["supercategory"] for c in coco["categories"]} == {"shape"}
    assert [im["id"] for im in coco["images"]] == list(range(1, NUM_IMAGES + 1))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))
    for im in coco["images"]:
        assert 256 <= im["width"] <= 352 and 256 <= im["height"] <= 352
        with Image.open(images_dir / im["file_name"]) as pil:
            assert pil.format == "JPEG" and pil.size == (im["width"], im["height"])
    # Sizes vary independently per image (the model must batch different sizes).
    assert len({(im["width"], im["height"]) for im in coco["images"]}) > 1


def test_boxes_inside_images_and_sized_as_documented(split):
    coco = _load(split[1])
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    per_image = {i: 0 for i in sizes}
    longest = []
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert ann["area"] == w * h and ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 5
        assert 12 <= max(w, h) <= min(width, height) // 2
        longest.append(max(w, h))
        per_image[ann["image_id"]] += 1
    assert all(1 <= n <= 6 for n in per_image.values())
    # Log-uniform sizes: objects smaller than one stride-32 cell and objects several cells large.
    assert min(longest) < 32 and max(longest) > 64


def _object_pixels(pixels: np.ndarray, class_index: int) -> np.ndarray:
    """Boolean [H, W]: pixels whose colour is that of class ``class_index`` (hue within 25 degrees)."""
    rgb = pixels.reshape(-1, 3) / 255.0
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb]).reshape(*pixels.shape[:2], 3)
    hue_deg = hsv[..., 0] * 360.0
    target = synthetic._CLASS_HUES_DEG[class_index]
    distance = np.abs((hue_deg - target + 180.0) % 360.0 - 180.0)
    return (distance < 25.0) & (hsv[..., 1] > 0.45) & (hsv[..., 2] > 0.45)


def test_boxes_are_tight_on_the_drawn_pixels(split):
    images_dir, ann_file = split
    coco = _load(ann_file)
    for im in coco["images"][:4]:
        pixels = np.asarray(Image.open(images_dir / im["file_name"]).convert("RGB"))
        for ann in (a for a in coco["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = (int(v) for v in ann["bbox"])
            inside = _object_pixels(pixels[y : y + h, x : x + w], ann["category_id"] - 1)
            # The object's colour reaches every edge of its box (within 1 px, for JPEG and noise) ...
            assert inside[:2].any() and inside[-2:].any() and inside[:, :2].any() and inside[:, -2:].any()
            # ... and the box is mostly covered by it (not a box around a different, smaller thing).
            assert inside.mean() > 0.2


@pytest.mark.parametrize("shape", SYNTHETIC_CLASSES)
def test_shape_masks_are_exactly_the_requested_size(shape):
    # On a flat (empty) background: the mask is cropped to the drawn pixels, so the first and last
    # rows and columns are all drawn on, and the longest side equals the requested size.
    rng = np.random.default_rng(0)
    for size in (12, 13, 17, 31, 64, 128):
        mask = np.asarray(synthetic._shape_mask(rng, shape, size)) > 0
        assert max(mask.shape) == size
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_loads_through_the_coco_loader(split):
    images_dir, ann_file = split
    dataset = CocoDetection(images=images_dir, annotations=ann_file)
    assert dataset.class_names == SYNTHETIC_CLASSES and len(dataset) == NUM_IMAGES
    image, target = dataset[0]
    coco = _load(ann_file)
    expected = [a["bbox"] for a in coco["annotations"] if a["image_id"] == 1]
    assert image.shape == (3, coco["images"][0]["height"], coco["images"][0]["width"])
    assert target["boxes"].tolist() == [[x, y, x + w, y + h] for x, y, w, h in expected]


def _mtimes(images_dir: Path, ann_file: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in [ann_file, *images_dir.iterdir()]}


def test_ensure_is_idempotent_and_regenerates_when_needed(tmp_path):
    kwargs = dict(split="val", num_images=4, seed=3)
    images_dir, ann_file = ensure_synthetic_split(tmp_path, **kwargs)
    before = _mtimes(images_dir, ann_file)
    assert ensure_synthetic_split(tmp_path, **kwargs) == (images_dir, ann_file)
    assert _mtimes(images_dir, ann_file) == before  # nothing rewritten

    # Other parameters: regenerated, and images of the larger split are not left behind.
    ensure_synthetic_split(tmp_path, **{**kwargs, "num_images": 2})
    assert _load(ann_file)["info"]["generator"]["num_images"] == 2
    assert sorted(p.name for p in images_dir.iterdir()) == ["000000.jpg", "000001.jpg"]

    ensure_synthetic_split(tmp_path, **kwargs)
    reference = ann_file.read_bytes()
    for damage in (ann_file.unlink, lambda: ann_file.write_text("{"), (images_dir / "000002.jpg").unlink):
        damage()
        ensure_synthetic_split(tmp_path, **kwargs)
        assert ann_file.read_bytes() == reference
        assert len(list(images_dir.iterdir())) == 4


def test_interrupted_generation_is_detected_and_redone(tmp_path, monkeypatch):
    kwargs = dict(split="train", num_images=3, seed=5)
    ensure_synthetic_split(tmp_path, **kwargs)

    def crash(*args, **kw):
        raise KeyboardInterrupt

    # Interrupt a regeneration with other parameters after the images, before the annotations.
    monkeypatch.setattr(synthetic, "atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic_split(tmp_path, **{**kwargs, "seed": 6})
    monkeypatch.undo()
    ann_file = tmp_path / "train" / "annotations.json"
    assert not ann_file.exists()  # the old, now mismatching, annotations were removed first
    ensure_synthetic_split(tmp_path, **{**kwargs, "seed": 6})
    assert _load(ann_file)["info"]["generator"]["seed"] == 6


@pytest.mark.parametrize(
    "bad",
    [
        {"num_images": 0},
        {"split": "../x"},
        {"min_image_size": 400},
        {"min_object_size": 200},
        {"max_objects": 0},
        {"jpeg_quality": 101},
        {"seed": 1.5},
    ],
)
def test_bad_parameters_raise_config_error(tmp_path, bad):
    kwargs = {"split": "train", "num_images": 2, "seed": 0, **bad}
    with pytest.raises(ConfigError) as err:
        generate_synthetic_coco(tmp_path, **kwargs)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # validated before anything is written
