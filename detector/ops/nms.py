"""Non-maximum suppression of several images at once: torchvision's kernel, one image per CPU core.

Shape shorthand:
    N: images in the batch
    B_i: candidate boxes of image i (boxes ``[B_i, 4]`` xyxy, scores ``[B_i]``)
    K_i: boxes image i keeps (indices into its candidates, best first)

The RPN suppresses each image's proposals on its own (section 3.1 of the Faster R-CNN paper), and
inference suppresses each image's detections per class. torchvision's CPU NMS is a sequential
greedy loop on one core, and it releases Python's GIL while it runs, so the images of a batch are
independent calls that can run side by side. On the default model's training step (4 images of
about 1,300 proposals each on a 2-core CPU) the four calls are a tenth of the step with one core
busy and the other idle; one thread per image up to ``torch.get_num_threads()`` spreads them over
the cores (docs/precision.md measures it; inside the training step only once OpenMP's idle thread
gives its core back soon after the convolutions: ``detector/cli/openmp.py``). The result is the
same call on the same tensors, so it is identical to the loop, index for index. On CUDA the kernels are asynchronous already, and with one
thread or one image there is nothing to spread: both take the plain loop.

The RPN keeps only the first ``post_nms_topk`` boxes NMS keeps (512 in training), yet greedy NMS
costs about (boxes kept) x (candidates): on the default model's training step every image kept at
least 512 of its ~1,200 candidates, the 512th by about the 650th candidate. :func:`nms_first` runs
the kernel on the best ``1.5 x k`` candidates first and touches the rest only when those keep fewer
than ``k``; greedy NMS decides each box from the higher-scoring ones alone, so the first ``k`` kept
are the same indices (the kernel of the pinned torchvision sorts the scores stably, so ties keep
their order; the tests check it against the kernel with heavy ties). On the CPU it cuts the step's NMS by about 40 %
(docs/speed.md).

Written here rather than taken from a library because no library offers it: torchvision's
``batched_nms`` separates classes within one image, not images on different cores, and its NMS has
no "first k only".
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

__all__ = ["nms_each", "nms_first"]


def nms_first(boxes: Tensor, scores: Tensor, iou_threshold: float, k: int) -> Tensor:
    """``torchvision.ops.nms(boxes, scores, iou_threshold)[:k]``, touching only the candidates it needs.

    Args:
        boxes: ``[B, 4]`` (xyxy).
        scores: ``[B]``.
        iou_threshold: boxes overlapping a kept one by more than this are dropped.
        k: how many kept boxes are wanted.

    Returns:
        int64 ``[min(k, K)]``: the first kept indices, by decreasing score (ties in input order).
    """
    if k < 0:
        raise ValueError(f"nms_first: k must be >= 0, got {k!r}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        # The kernel checks this itself, but the first call below sees only the first rows.
        raise ValueError(f"nms_first: boxes must be [B, 4] and scores [B], got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    first = math.ceil(1.5 * k)
    if len(scores) <= first or boxes.device.type != "cpu":
        # On CUDA the kernel is parallel over all pairs: a second call would only add a round trip.
        return nms(boxes, scores, iou_threshold)[:k]
    # The order the kernel visits the boxes in (its sort is stable): by decreasing score.
    order = scores.argsort(descending=True, stable=True)
    boxes, scores = boxes[order], scores[order]
    keep = nms(boxes[:first], scores[:first], iou_threshold)
    if len(keep) < k:
        # The rest, behind the boxes kept so far: those outrank every later candidate (ties stay
        # ahead, the sort being stable) and never suppress each other, so the kernel suppresses the
        # rest exactly as one call over all the candidates would.
        rest = torch.cat([keep, torch.arange(first, len(scores), device=keep.device)])
        keep = rest[nms(boxes[rest], scores[rest], iou_threshold)]
    return order[keep[:k]]


def nms_each(
    boxes: list[Tensor],
    scores: list[Tensor],
    iou_threshold: float,
    idxs: list[Tensor] | None = None,
    *,
    threads: int | None = None,
    max_kept: int | None = None,
) -> list[Tensor]:
    """``torchvision.ops.nms`` (or ``batched_nms`` with ``idxs``: per class) for each image.

    Args:
        boxes: N tensors ``[B_i, 4]`` (xyxy).
        scores: N tensors ``[B_i]``.
        iou_threshold: boxes overlapping a kept one by more than this are dropped.
        idxs: N tensors ``[B_i]`` of class indices: boxes of different classes never suppress
            each other (``batched_nms``); None: one class.
        threads: at most this many images at once (default ``torch.get_num_threads()``).
        max_kept: keep at most this many boxes per image, found by :func:`nms_first` (one class only);
            None: all.

    Returns:
        N int64 tensors ``[K_i]``: the kept indices of each image, by decreasing score.
    """
    if not len(boxes) == len(scores) == (len(idxs) if idxs is not None else len(boxes)):
        raise ValueError(f"nms_each needs one tensor per image in each list, got {len(boxes)} boxes, "
                         f"{len(scores)} scores and {len(idxs) if idxs is not None else len(boxes)} idxs")

    if max_kept is not None and idxs is not None:
        raise ValueError("nms_each: max_kept is for one class (idxs=None); cut batched_nms's result instead")

    def one(i: int) -> Tensor:
        if max_kept is not None:
            return nms_first(boxes[i], scores[i], iou_threshold, max_kept)
        if idxs is None:
            return nms(boxes[i], scores[i], iou_threshold)
        return batched_nms(boxes[i], scores[i], idxs[i], iou_threshold)

    workers = min(len(boxes), torch.get_num_threads() if threads is None else threads)
    if workers < 2 or boxes[0].device.type != "cpu":
        return [one(i) for i in range(len(boxes))]
    # A pool per call, not one kept alive: starting two threads costs microseconds against the
    # milliseconds of the kernels, and no idle thread outlives the call into a forked data-loader
    # worker. Grad mode and autocast are thread-local, so the threads see neither (NMS has no
    # gradient, and the boxes arrive in float32, as the autocast wrapper would have cast them).
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nms") as pool:
        return list(pool.map(one, range(len(boxes))))
