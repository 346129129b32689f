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
the cores (docs/precision.md measures it). The result is the same call on the same tensors, so it is
identical to the loop, index for index. On CUDA the kernels are asynchronous already, and with one
thread or one image there is nothing to spread: both take the plain loop.

Written here rather than taken from a library because no library offers it: torchvision's
``batched_nms`` separates classes within one image, not images on different cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

__all__ = ["nms_each"]


def nms_each(
    boxes: list[Tensor],
    scores: list[Tensor],
    iou_threshold: float,
    idxs: list[Tensor] | None = None,
    *,
    threads: int | None = None,
) -> list[Tensor]:
    """``torchvision.ops.nms`` (or ``batched_nms`` with ``idxs``: per class) for each image.

    Args:
        boxes: N tensors ``[B_i, 4]`` (xyxy).
        scores: N tensors ``[B_i]``.
        iou_threshold: boxes overlapping a kept one by more than this are dropped.
        idxs: N tensors ``[B_i]`` of class indices: boxes of different classes never suppress
            each other (``batched_nms``); None: one class.
        threads: at most this many images at once (default ``torch.get_num_threads()``).

    Returns:
        N int64 tensors ``[K_i]``: the kept indices of each image, by decreasing score.
    """
    if not len(boxes) == len(scores) == (len(idxs) if idxs is not None else len(boxes)):
        raise ValueError(f"nms_each needs one tensor per image in each list, got {len(boxes)} boxes, "
                         f"{len(scores)} scores and {len(idxs) if idxs is not None else len(boxes)} idxs")

    def one(i: int) -> Tensor:
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
