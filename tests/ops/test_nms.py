"""nms_each: the images side by side give exactly torchvision's per-image NMS."""

from __future__ import annotations

import threading

import pytest
import torch
from torchvision.ops import batched_nms, nms

import detector.ops.nms as nms_module
from detector.ops.nms import nms_each, nms_first


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


@pytest.mark.parametrize("k", [1, 50, 200, 400, 5000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_first_k_equal_torchvision_cut_to_k(k, seed):
    # Shuffled input with heavy ties: the first k kept must be the kernel's, index for index, both
    # when the best 1.5 k candidates keep k (no second call) and when they keep fewer.
    boxes, scores, _ = _images([900, 1300], seed=seed)
    for b, s in zip(boxes, scores):
        want = nms(b, s, 0.7)[:k]
        assert torch.equal(nms_first(b, s, 0.7, k), want)
    # Already sorted by score, as the RPN's top-k hands them over.
    order = scores[1].argsort(descending=True, stable=True)
    b, s = boxes[1][order], scores[1][order]
    assert torch.equal(nms_first(b, s, 0.7, k), nms(b, s, 0.7)[:k])


def test_first_k_takes_the_second_call_only_when_needed(monkeypatch):
    calls: list[int] = []
    real = nms_module.nms

    def spy(b, s, t):
        calls.append(len(b))
        return real(b, s, t)

    monkeypatch.setattr(nms_module, "nms", spy)
    boxes, scores, _ = _images([1300], seed=3)
    b, s = boxes[0], scores[0]
    kept_of_first = len(real(b[s.argsort(descending=True, stable=True)[:150]], s.sort(descending=True, stable=True)[0][:150], 0.7))
    assert kept_of_first >= 100  # the best 150 keep 100: one call on 150 boxes
    assert torch.equal(nms_first(b, s, 0.7, 100), real(b, s, 0.7)[:100]) and calls == [150]
    calls.clear()
    # At IoU 0.3 the clusters suppress most boxes: the best 150 keep fewer than 100, so the rest is
    # needed, behind the boxes kept so far.
    want = real(b, s, 0.3)[:100]
    assert len(real(b, s, 0.3)) > 100
    assert torch.equal(nms_first(b, s, 0.3, 100), want)
    assert len(calls) == 2 and calls[0] == 150 and calls[1] < 1300


def test_first_k_edge_cases_match_the_kernel():
    boxes, scores, _ = _images([400], seed=5)
    b, s = boxes[0], scores[0]
    assert nms_first(b, s, 0.7, 0).tolist() == [] and nms_first(b[:0], s[:0], 0.7, 10).tolist() == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        nms_first(b, s, 0.7, -1)
    with pytest.raises(ValueError, match=r"boxes must be \[B, 4\] and scores \[B\], got \(400, 4\) and \(399,\)"):
        nms_first(b, s[:-1], 0.7, 10)  # the kernel refuses it too; the first call alone would not see it
    s = s.clone()
    s[::7] = float("nan")  # the kernel's stable sort puts NaN first: both paths must agree on it
    for k, t in ((20, 0.7), (100, 0.3)):
        assert torch.equal(nms_first(b, s, t, k), nms(b, s, t)[:k])


def test_nms_each_max_kept_cuts_each_image_and_refuses_classes():
    boxes, scores, labels = _images([1300, 0, 700, 1], seed=4)
    got = nms_each(boxes, scores, 0.7, threads=2, max_kept=128)
    assert [torch.equal(g, nms(b, s, 0.7)[:128]) for g, b, s in zip(got, boxes, scores)] == [True] * 4
    assert len(got[0]) == 128
    with pytest.raises(ValueError, match="max_kept is for one class"):
        nms_each(boxes, scores, 0.5, labels, max_kept=10)
