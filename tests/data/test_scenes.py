"""Tests of the second generator (detector/data/scenes.py): determinism, cache, the visible-extent
boxes, occlusion as crowd regions, class imbalance, and one-line parameter errors."""

from __future__ import annotations

import json
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from detector.data import CocoDetection
from detector.data import scenes
from detector.data.scenes import ensure_scenes_split, scene_class_names
from detector.errors import ConfigError

SMALL = dict(min_image_size=64, max_image_size=96, background="texture")


def _coco(ann):
    return json.loads(ann.read_text())


def test_same_arguments_same_files_and_cache_reuse(tmp_path):
    a_dir, a_ann = ensure_scenes_split(tmp_path / "a", split="train", num_images=4, seed=3, **SMALL)
    b_dir, b_ann = ensure_scenes_split(tmp_path / "b", split="train", num_images=4, seed=3, **SMALL)
    assert a_ann.read_bytes() == b_ann.read_bytes()
    assert [p.read_bytes() for p in sorted(a_dir.iterdir())] == [p.read_bytes() for p in sorted(b_dir.iterdir())]
    mtime = a_ann.stat().st_mtime_ns
    ensure_scenes_split(tmp_path / "a", split="train", num_images=4, seed=3, **SMALL)
    assert a_ann.stat().st_mtime_ns == mtime  # complete and same parameters: reused
    ensure_scenes_split(tmp_path / "a", split="train", num_images=4, seed=4, **SMALL)
    assert _coco(a_ann)["info"]["generator"]["seed"] == 4  # other parameters: regenerated


def test_loads_through_the_coco_loader_with_class_names(tmp_path):
    _, ann = ensure_scenes_split(tmp_path, split="val", num_images=3, seed=0, num_classes=12, **SMALL)
    ds = CocoDetection(images=tmp_path / "val" / "images", annotations=ann)
    assert ds.num_classes == 12 and list(ds.class_names) == scene_class_names(12)
    assert len(set(scene_class_names(20))) == 20
    image, target = ds[0]
    assert image.shape[0] == 3 and target["boxes"].shape[1] == 4


def test_single_object_box_is_the_tight_extent_of_its_pixels(tmp_path, monkeypatch):
    # A black background makes the object the only bright pixels: its box must be their extent.
    monkeypatch.setattr(scenes, "_texture", lambda rng, h, w: np.zeros((h, w, 3), np.float32))
    images_dir, ann = ensure_scenes_split(
        tmp_path, split="train", num_images=6, seed=1, num_classes=10, min_objects=1, max_objects=1,
        min_object_size=0.3, max_object_size=0.8, **SMALL,
    )
    coco = _coco(ann)
    assert len(coco["annotations"]) == 6
    for im, a in zip(coco["images"], coco["annotations"]):
        pixels = np.asarray(Image.open(images_dir / im["file_name"]).convert("RGB")).max(axis=2)
        ys, xs = np.nonzero(pixels > 70)
        x, y, w, h = a["bbox"]
        # Anti-aliased edges and JPEG ringing move the thresholded extent by at most 2 px.
        assert abs(xs.min() - x) <= 2 and abs(ys.min() - y) <= 2
        assert abs(xs.max() + 1 - (x + w)) <= 2 and abs(ys.max() + 1 - (y + h)) <= 2


def test_boxes_inside_images_and_occlusion_becomes_crowd(tmp_path):
    common = dict(split="train", num_images=6, seed=2, min_objects=20, max_objects=20,
                  min_object_size=0.2, max_object_size=0.4, **SMALL)  # fmt: skip
    _, separate = ensure_scenes_split(tmp_path / "sep", max_overlap=0.0, **common)
    _, occluded = ensure_scenes_split(tmp_path / "occ", max_overlap=1.0, min_visible=0.6, **common)
    for ann in (separate, occluded):
        coco = _coco(ann)
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = sizes[a["image_id"]]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
    assert not any(a["iscrowd"] for a in _coco(separate)["annotations"])
    crowd = [a["iscrowd"] for a in _coco(occluded)["annotations"]]
    assert 0 < sum(crowd) < len(crowd)  # some objects hidden under later ones, not all


def test_imbalance_makes_the_first_classes_common(tmp_path):
    _, ann = ensure_scenes_split(
        tmp_path, split="train", num_images=20, seed=0, num_classes=6, imbalance=2.0, min_objects=8,
        max_objects=8, min_object_size=0.1, max_object_size=0.15, max_overlap=1.0, min_visible=0.0, **SMALL,
    )
    counts = Counter(a["category_id"] for a in _coco(ann)["annotations"])
    assert counts[1] > 2 * counts[2] > 0 and counts[1] > 10 * counts.get(6, 0)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(num_classes=21), "num_classes"),
        (dict(min_object_size=0.5, max_object_size=0.2), "min_object_size"),
        (dict(background="sky"), "background"),
        (dict(num_images=1.5), "num_images must be an integer"),
        (dict(split="a/b"), "split"),
    ],
)
def test_bad_parameters_one_line(tmp_path, bad, message):
    kwargs = dict(split="train", num_images=2, seed=0, **SMALL)
    kwargs.update(bad)
    with pytest.raises(ConfigError, match=message) as e:
        ensure_scenes_split(tmp_path, **kwargs)
    assert "\n" not in str(e.value)


def test_photo_backgrounds_without_scikit_image_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # import skimage -> ImportError
    with pytest.raises(ConfigError, match=r"pip install -e \"\.\[benchmarks\]\""):
        ensure_scenes_split(tmp_path, split="train", num_images=1, seed=0, min_image_size=64,
                            max_image_size=64, background="photo")  # fmt: skip


def test_photo_backgrounds_come_from_scikit_image(tmp_path):
    pytest.importorskip("skimage")
    images_dir, _ = ensure_scenes_split(tmp_path, split="train", num_images=2, seed=0, min_image_size=64,
                                        max_image_size=80, background="photo")  # fmt: skip
    assert len(list(images_dir.iterdir())) == 2
