"""Proposal files: formats, matching to images, score order, top-k, clipping, flips, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from detector.data import CocoDetection, build_train_augmentation
from detector.data.proposals import load_proposals, save_proposals
from detector.errors import DatasetError

IMAGES = {1: {"file_name": "a.jpg", "width": 100, "height": 50}, 2: {"file_name": "sub/b.png", "width": 80, "height": 60}}


def test_pt_sorted_by_score_topk_clipped_and_empty_dropped(tmp_path):
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 150, 40], [20, 20, 20.5, 30], [1, 1, 2, 2]], dtype=torch.float32)
    scores = torch.tensor([0.1, 0.9, 0.8, 0.5])
    path = save_proposals(tmp_path / "p.pt", {1: (boxes, scores), 2: (torch.zeros(0, 4), torch.zeros(0))})
    with pytest.warns(UserWarning, match=r"p\.pt: 1 proposal\(s\) clipped to their image, 1 under 1 px after clipping dropped"):
        got = load_proposals(path, IMAGES, topk=3)
    # best first: 0.9 (clipped to x2 = 100), 0.8 (0.5 px wide: dropped), 0.5; the 0.1 one is past top-3.
    assert got[1].tolist() == [[5, 5, 100, 40], [1, 1, 2, 2]] and got[2].shape == (0, 4)


def test_json_keyed_by_file_names_without_scores_keeps_file_order(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"a": {"boxes": [[0, 0, 5, 5], [1, 1, 9, 9]]}, "b.png": {"boxes": []}}))
    got = load_proposals(tmp_path / "p.json", IMAGES, topk=1)
    assert got[1].tolist() == [[0, 0, 5, 5]] and got[2].shape == (0, 4)


@pytest.mark.parametrize("content,message", [
    ({"1": {"boxes": [[0, 0, 5, 5]]}}, r"no proposals for 1 of the split's 2 images \(first: sub/b\.png\)"),
    ({"1": {"boxes": [[0, 0, 5]]}, "2": {"boxes": []}}, r"image a\.jpg: boxes of shape \[1, 3\]"),
    ({"1": {"boxes": [[0, 0, float("nan"), 5]]}, "2": {"boxes": []}}, r"image a\.jpg: non-finite"),
    ({"1": {"boxes": [[0, 0, 5, 5]], "scores": [1, 2]}, "2": {"boxes": []}}, r"2 scores for 1 boxes"),
])
def test_bad_files_name_the_file_and_image(tmp_path, content, message):
    (tmp_path / "p.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=message):
        load_proposals(tmp_path / "p.json", IMAGES)


def test_missing_and_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="proposal file not found"):
        load_proposals(tmp_path / "nope.pt", IMAGES)
    (tmp_path / "p.pkl").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"unknown proposal file format '\.pkl'.*detectron2"):
        load_proposals(tmp_path / "p.pkl", IMAGES)


def test_the_dataset_flips_proposals_with_the_image(tmp_path):
    Image.new("RGB", (100, 50)).save(tmp_path / "a.jpg")
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 50}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}]}))
    save_proposals(tmp_path / "p.pt", {1: (torch.tensor([[0.0, 5.0, 30.0, 25.0], [60.0, 0.0, 100.0, 50.0]]), None)})
    ds = CocoDetection(images=tmp_path, annotations=tmp_path / "ann.json", proposals=tmp_path / "p.pt",
                       transforms=build_train_augmentation(hflip_prob=1.0))
    _, target = ds[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[70.0, 10, 90, 30]]), atol=1e-4, rtol=0)
    assert target["labels"].tolist() == [1]
    torch.testing.assert_close(target["proposals"], torch.tensor([[70.0, 5, 100, 25], [0, 0, 40, 50]]), atol=1e-4, rtol=0)


class _Payload:
    """A pickled object whose unpickling would call os.system: weights_only loading must refuse it."""

    def __reduce__(self):
        import os

        return (os.system, ("echo PWNED > pwned.txt",))


def test_a_pt_file_holding_pickled_code_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"image_ids": [1], "boxes": [_Payload()]}, tmp_path / "evil.pt")
    with pytest.raises(DatasetError, match=r"evil\.pt") as err:
        load_proposals(tmp_path / "evil.pt", IMAGES)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned.txt").exists()
