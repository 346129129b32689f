"""nms_each: the images side by side give exactly torchvision's per-image NMS."""

from __future__ import annotations

import threading

import pytest
import torch
from torchvision.ops import batched_nms, nms

import detector.ops.nms as nms_module
from detector.ops.nms import nms_each


def _images(counts: list[int], seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Clustered boxes (so NMS suppresses many), random scores with ties, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    boxes, scores, labels = [], [], []
    for n in counts:
        centres = torch.rand(max(n // 20, 1), 2, generator=g) * 300
        xy = centres[torch.randint(len(centres), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 8
        wh = 20 + torch.rand(n, 2, generator=g) * 40
        boxes.append(torch.cat([xy, xy + wh], 1))
        scores.append((torch.rand(n, generator=g) * 50).round() / 50)  # ties: the order must still agree
        labels.append(torch.randint(1, 4, (n,), generator=g))
    return boxes, scores, labels


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_equals_torchvision_image_by_image(threads):
    boxes, scores, labels = _images([1300, 0, 700, 1, 1000])
    got = nms_each(boxes, scores, 0.7, threads=threads)
    for b, s, k in zip(boxes, scores, got):
        want = nms(b, s, 0.7)
        assert k.dtype == torch.int64 and torch.equal(k, want)
    assert 0 < len(got[0]) < 1300  # the clusters were suppressed: a non-trivial comparison
    per_class = nms_each(boxes, scores, 0.5, labels, threads=threads)
    for b, s, c, k in zip(boxes, scores, labels, per_class):
        assert torch.equal(k, batched_nms(b, s, c, 0.5))
    assert not torch.equal(per_class[0], nms(boxes[0], scores[0], 0.5))  # classes mattered


def test_under_autocast_and_inference_mode_the_threads_give_the_same():
    # Both modes are thread-local: the threads run outside them, on the same float32 boxes.
    boxes, scores, labels = _images([800, 900], seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nms_each(boxes, scores, 0.7, threads=2)
    for b, s, k in zip(boxes, scores, got):
        assert torch.equal(k, nms(b, s, 0.7))
    with torch.inference_mode():
        frozen = [(b.clone(), s.clone(), c.clone()) for b, s, c in zip(boxes, scores, labels)]
        b, s, c = map(list, zip(*frozen))
        got = nms_each(b, s, 0.5, c, threads=2)
    for (b, s, c), k in zip(frozen, got):
        assert torch.equal(k, batched_nms(b, s, c, 0.5))


def test_spreads_images_over_threads_up_to_the_limit(monkeypatch):
    seen: list[int] = []
    names: set[str] = set()

    class Recording(nms_module.ThreadPoolExecutor):
        def __init__(self, max_workers, **kwargs):
            seen.append(max_workers)
            super().__init__(max_workers=max_workers, **kwargs)

    real = nms_module.nms

    def spy(*args):
        names.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(nms_module, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(nms_module, "nms", spy)
    boxes, scores, _ = _images([50, 60, 70])
    nms_each(boxes, scores, 0.7, threads=2)
    assert seen == [2] and all(n.startswith("nms") for n in names)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    nms_each(boxes, scores, 0.7)
    assert seen == [2, 3]  # never more threads than images
    names.clear()
    nms_each(boxes, scores, 0.7, threads=1)
    nms_each(boxes[:1], scores[:1], 0.7)
    assert seen == [2, 3] and names == {threading.current_thread().name}  # one thread or one image: the plain loop


def test_lists_of_different_lengths_are_refused():
    boxes, scores, labels = _images([10, 10])
    with pytest.raises(ValueError, match=r"one tensor per image in each list, got 2 boxes, 1 scores and 2 idxs"):
        nms_each(boxes, scores[:1], 0.7)
    with pytest.raises(ValueError, match=r"got 2 boxes, 2 scores and 1 idxs"):
        nms_each(boxes, scores, 0.7, labels[:1])
