"""Tests of the COCO dataset: label mapping, target filtering, image modes, errors, transforms."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detector.data import CocoDetection, build_train_augmentation
from detector.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]
from conftest import FORMATS as FIXTURES  # noqa: E402


def _write_coco(root: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file


def _ann(ann_id: int, image_id: int, category_id: int, bbox: list[float], **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}  # fmt: skip


@pytest.fixture()
def simple(tmp_path: Path) -> tuple[Path, Path]:
    """Two 40x30 RGB images; categories with non-contiguous ids 7, 3, 42 (listed out of order)."""
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / name)
    images = [{"id": 5, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 9, "file_name": "b.png", "width": 40, "height": 30}]  # fmt: skip
    annotations = [
        _ann(1, 5, 42, [1, 2, 10, 5]),
        _ann(2, 5, 3, [20, 10, 5, 5]),
        _ann(3, 5, 7, [0, 0, 40, 30], iscrowd=1),  # crowd: dropped
        _ann(4, 5, 7, [30, 20, 20, 20]),  # clipped to [30, 20, 40, 30]
        _ann(5, 5, 7, [5, 5, 0.5, 10]),  # 0.5 px wide: dropped
        _ann(6, 5, 7, [45, 5, 5, 5]),  # entirely outside: nothing left after clipping
        _ann(7, 5, 3, [2, 2, 4, 4], ignore=1),  # ignore flag: dropped
        _ann(8, 9, 7, [-3, -2, 8, 6]),  # clipped to [0, 0, 5, 4]
    ]
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 42, "name": "answer"}]
    return tmp_path, _write_coco(tmp_path, images, annotations, categories)


def test_noncontiguous_category_ids_map_to_sorted_contiguous_labels(simple):
    images_dir, ann_file = simple
    ds = CocoDetection(images=images_dir, annotations=ann_file)
    assert ds.cat_id_to_label == {3: 1, 7: 2, 42: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 42}
    assert ds.class_names == ("three", "seven", "answer") and ds.num_classes == 3
    assert ds.ids == [5, 9] and len(ds) == 2


def test_targets_drop_crowd_ignore_and_degenerate_and_clip(simple):
    images_dir, ann_file = simple
    ds = CocoDetection(images=images_dir, annotations=ann_file)
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert torch.allclose(image[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].tolist() == [[1, 2, 11, 7], [20, 10, 25, 15], [30, 20, 40, 30]]
    assert target["labels"].tolist() == [3, 1, 2]
    assert target["image_id"] == 5 and target["orig_size"] == (30, 40)
    assert ds[1][1]["boxes"].tolist() == [[0, 0, 5, 4]]
    # The evaluation's ground truth follows the same rule: crowd and ignore regions stay (scored as
    # ignored), the two unusable boxes are gone from it too, the clipped ones are clipped there too.
    assert ds.coco.getAnnIds() == [1, 2, 3, 4, 7, 8] and len(ds.coco.getAnnIds(iscrowd=True)) == 1
    assert ds.coco.anns[4]["bbox"] == [30, 20, 10, 10] and ds.coco.anns[4]["area"] == 100


def test_aspect_ratios_come_from_the_annotations_in_index_order(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    images = [{"id": 4, "file_name": "x.png", "width": 60, "height": 30},
              {"id": 2, "file_name": "x.png", "width": 20, "height": 50},
              {"id": 3, "file_name": "x.png", "width": 10, "height": 10}]  # fmt: skip
    annotations = [_ann(1, 2, 1, [0, 0, 4, 4])]
    ann_file = _write_coco(tmp_path, images, annotations, [{"id": 1, "name": "thing"}])
    ds = CocoDetection(images=tmp_path, annotations=ann_file, check_files=False)
    assert ds.ids == [4, 2, 3] and ds.aspect_ratios() == [2.0, 0.4, 1.0]
    assert CocoDetection(images=tmp_path, annotations=ann_file, skip_empty=True, check_files=False).aspect_ratios() == [0.4]


def test_loading_prints_nothing(simple, capsys):
    CocoDetection(images=simple[0], annotations=simple[1])
    assert capsys.readouterr().out == ""


def test_hflip_transform_mirrors_boxes(simple):
    images_dir, ann_file = simple
    plain = CocoDetection(images=images_dir, annotations=ann_file)
    flipped = CocoDetection(
        images=images_dir, annotations=ann_file, transforms=build_train_augmentation(hflip_prob=1.0)
    )
    width = 40
    (_, t), (_, t_flip) = plain[0], flipped[0]
    x1, y1, x2, y2 = t["boxes"].unbind(1)
    expected = torch.stack([width - x2, y1, width - x1, y2], dim=1)
    assert torch.allclose(t_flip["boxes"], expected, atol=1e-4)
    assert t_flip["labels"].tolist() == t["labels"].tolist()


def test_transform_that_drops_every_box_gives_empty_targets(simple):
    def drop_all(*, image, bboxes, labels):
        return {"image": image, "bboxes": [], "labels": []}

    ds = CocoDetection(images=simple[0], annotations=simple[1], transforms=drop_all)
    _, target = ds[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64


def test_skip_empty(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    images = [{"id": i, "file_name": "x.png", "width": 8, "height": 8} for i in (1, 2, 3)]
    annotations = [_ann(1, 2, 1, [0, 0, 4, 4]), _ann(2, 3, 1, [0, 0, 4, 4], iscrowd=1)]
    ann_file = _write_coco(tmp_path, images, annotations, [{"id": 1, "name": "thing"}])
    assert CocoDetection(images=tmp_path, annotations=ann_file).ids == [1, 2, 3]
    assert CocoDetection(images=tmp_path, annotations=ann_file, skip_empty=True).ids == [2]


def _image_of_mode(mode: str) -> Image.Image:
    rgb = Image.new("RGB", (6, 4), (200, 100, 50))
    if mode == "I;16":
        return Image.fromarray(np.full((4, 6), 65535 // 2, dtype=np.uint16))
    return rgb.convert(mode)


@pytest.mark.parametrize(
    "mode, suffix", [("L", ".png"), ("LA", ".png"), ("P", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"),
                     ("I;16", ".png"), ("RGB", ".jpg")],
)  # fmt: skip
def test_any_image_mode_becomes_three_channel_rgb(tmp_path, mode, suffix):
    img = _image_of_mode(mode)
    assert img.mode == mode
    img.save(tmp_path / f"im{suffix}")
    ann_file = _write_coco(
        tmp_path, [{"id": 1, "file_name": f"im{suffix}", "width": 6, "height": 4}],
        [_ann(1, 1, 1, [1, 1, 3, 2])], [{"id": 1, "name": "thing"}],
    )  # fmt: skip
    image, target = CocoDetection(images=tmp_path, annotations=ann_file)[0]
    assert image.shape == (3, 4, 6) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    if mode == "I;16":
        # 16-bit is rescaled to 8 bit (PIL's own conversion would clip everything above 255 to white).
        assert torch.allclose(image, torch.full_like(image, 0.5), atol=2 / 255)
    elif mode in ("RGB", "RGBA", "P", "CMYK"):
        assert torch.allclose(image[:, 2, 3], torch.tensor([200, 100, 50]) / 255.0, atol=12 / 255)
    else:  # grey: all three channels equal
        assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_missing_image_raises_naming_the_file(simple):
    images_dir, ann_file = simple
    (images_dir / "b.png").unlink()
    (images_dir / "a.png").unlink()
    # Every missing file is found at once, before training starts (a stat per image).
    with pytest.raises(DatasetError, match=r"instances\.json: 2 of 2 image files not found under .* \(a\.png, b\.png\)") as err:
        CocoDetection(images=images_dir, annotations=ann_file)
    assert "\n" not in str(err.value)
    # Without the check, the file that disappears later is named when it is read.
    ds = CocoDetection(images=images_dir, annotations=ann_file, check_files=False)
    with pytest.raises(DatasetError, match=r"b\.png: image file not found") as err:
        ds[1]
    assert "\n" not in str(err.value)


def test_unreadable_image_raises_naming_the_file(simple):
    images_dir, ann_file = simple
    (images_dir / "a.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"a\.png: cannot read image") as err:
        CocoDetection(images=images_dir, annotations=ann_file)[0]
    assert "\n" not in str(err.value)


def test_image_size_differing_from_json_raises(simple):
    images_dir, ann_file = simple
    Image.new("RGB", (30, 40)).save(images_dir / "a.png")  # transposed
    with pytest.raises(DatasetError, match=r"a\.png: image is 30x40 but .*instances\.json says 40x30"):
        CocoDetection(images=images_dir, annotations=ann_file)[0]


def test_bad_json_raises_with_file_line_and_column(tmp_path):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DatasetError, match=r"broken\.json: invalid JSON at line 3 column 19") as err:
        CocoDetection(images=tmp_path, annotations=ann_file)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [], "annotations": []}', r"missing key\(s\) 'categories'"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "lacks 'id' or 'name'"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "lacks 'id', 'file_name'"),
        (
            '{"images": [{"id": 1, "file_name": "a", "width": 2, "height": 2}], '
            '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0]}], '
            '"categories": [{"id": 1, "name": "x"}]}',
            r"annotation id 1 has bbox \[0, 0\]",
        ),
    ],
)
def test_malformed_coco_raises(tmp_path, content, message):
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(content)
    with pytest.raises(DatasetError, match=message) as err:
        CocoDetection(images=tmp_path, annotations=ann_file)
    assert str(err.value).startswith(str(ann_file)) and "\n" not in str(err.value)


def test_missing_paths_raise(simple, tmp_path):
    images_dir, ann_file = simple
    with pytest.raises(DatasetError, match="nowhere: images directory not found"):
        CocoDetection(images=tmp_path / "nowhere", annotations=ann_file)
    with pytest.raises(DatasetError, match="none.json: annotation file not found"):
        CocoDetection(images=images_dir, annotations=tmp_path / "none.json")


def test_coco_sample_edge_cases(tmp_path):
    """coco_sample.json: crowd, ignore, zero-size boxes, an unlisted category, image id 0."""
    ann_file = FIXTURES / "coco_sample.json"
    for im in json.loads(ann_file.read_text())["images"]:  # the fixture has no images: make blank ones
        Image.new("RGB", (im["width"], im["height"])).save(tmp_path / im["file_name"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(images=tmp_path, annotations=ann_file)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages  # one warning per dataset, not per annotation
    assert "coco_sample.json" in messages[0] and "category_id not in 'categories' (e.g. 3)" in messages[0]
    assert "3 dropped" in messages[0] and "zero or negative size" in messages[0]

    assert ds.class_names == ("tram", "van") and ds.ids == [0, 1, 2, 3]
    targets = {ds[i][1]["image_id"]: ds[i][1] for i in range(len(ds))}
    # Image 0: the crowd "van" is dropped. Image 1: the ignored box, the zero-width box and the box of
    # the unlisted category 3 are dropped. Image 2 has no annotations. Image 3: a 12 x 8 box whose
    # "area" says 0 is kept (the box is what matters); the 1 x 0.1 box is dropped.
    assert targets[0]["boxes"].tolist() == [[5, 5, 35, 30]] and targets[0]["labels"].tolist() == [1]
    assert targets[1]["boxes"].tolist() == [[2, 3, 42, 43]] and targets[1]["labels"].tolist() == [1]
    assert targets[2]["boxes"].shape == (0, 4) and targets[2]["labels"].shape == (0,)
    assert targets[3]["boxes"].tolist() == [[1, 1, 13, 9]] and targets[3]["labels"].tolist() == [2]
    assert targets[3]["orig_size"] == (20, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert CocoDetection(images=tmp_path, annotations=ann_file, skip_empty=True).ids == [0, 1, 3]


def test_coco_small_with_real_images():
    ann_file = FIXTURES / "coco_small" / "gt_dataset.json"
    ds = CocoDetection(images=FIXTURES / "coco_small", annotations=ann_file)
    coco = json.loads(ann_file.read_text())
    assert ds.class_names == ("kite", "boat", "cone", "star") and len(ds) == 3
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 128, 128) and 0.0 <= image.min() and image.max() <= 1.0
        anns = [a for a in coco["annotations"] if a["image_id"] == target["image_id"]]
        assert target["boxes"].tolist() == [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        assert target["labels"].tolist() == [a["category_id"] for a in anns]


def test_real_jpeg_photo(tmp_path):
    shutil.copy(FIXTURES / "color.jpg", tmp_path / "color.jpg")
    with Image.open(tmp_path / "color.jpg") as pil:
        width, height = pil.size
    ann_file = _write_coco(
        tmp_path, [{"id": 1, "file_name": "color.jpg", "width": width, "height": height}],
        [_ann(1, 1, 1, [10, 10, 50, 40])], [{"id": 1, "name": "thing"}],
    )  # fmt: skip
    image, target = CocoDetection(images=tmp_path, annotations=ann_file)[0]
    assert image.shape == (3, height, width) and image.std() > 0.05  # a photo, not a blank page
    assert target["orig_size"] == (height, width)


def _noisy(tmp_path: Path) -> Path:
    """Three 40x30 images of different random pixels, one box each."""
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    images = [{"id": i, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(("a.png", "b.png", "c.png"), 1)]
    return _write_coco(tmp_path, images, [_ann(i, i, 1, [2, 3, 20, 15]) for i in (1, 2, 3)], [{"id": 1, "name": "x"}])


def _darken(image, bboxes, labels):
    assert not image.flags.writeable  # from disk or memory: no transform writes into the cache
    return {"image": image // 2, "bboxes": bboxes, "labels": labels}


def test_cached_images_are_the_files_pixels_up_to_the_budget(tmp_path):
    import pickle

    ann_file = _noisy(tmp_path)
    plain = CocoDetection(images=tmp_path, annotations=ann_file)

    cached = CocoDetection(images=tmp_path, annotations=ann_file, transforms=_darken)
    one = 30 * 40 * 3
    cached.cache_images(2 * one)  # room for two of the three
    first = [cached[i][0] for i in range(3)]
    assert cached.cached_bytes == 2 * one
    want = [(plain[i][0] * 255).round().div(2, rounding_mode="floor") / 255 for i in range(2)]  # uint8 // 2
    for name in ("a.png", "b.png"):
        (tmp_path / name).unlink()  # the first two now come from memory only
    again = [cached[i][0] for i in range(2)]
    for i in range(2):
        assert torch.equal(first[i], again[i]) and torch.allclose(again[i], want[i], atol=1e-6)
    assert not torch.equal(first[0], first[1])
    with pytest.raises(DatasetError, match="a.png"):
        CocoDetection(images=tmp_path, annotations=ann_file, check_files=False)[0]  # without the cache: gone
    worker_copy = pickle.loads(pickle.dumps(cached))  # a loader worker starts empty
    assert worker_copy.cached_bytes == 0 and cached.cached_bytes == 2 * one
    with pytest.raises(ValueError, match="max_bytes"):
        cached.cache_images(-1)


def test_a_forked_worker_reads_the_cache_but_never_adds_to_it(tmp_path, monkeypatch):
    import os

    ann_file = _noisy(tmp_path)
    dataset = CocoDetection(images=tmp_path, annotations=ann_file)
    dataset.cache_images(1 << 20)
    dataset[0]
    assert dataset.cached_bytes == 3600
    parent = os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # as in a forked data-loader worker
    (tmp_path / "a.png").unlink()
    dataset[0], dataset[1]  # the first from the parent's memory, the second from disk
    assert dataset.cached_bytes == 3600
