"""Run a detector over a data loader and score it: the one evaluation loop train and eval share.

Shape shorthand:
    N: number of images in a batch
    D: number of detections in one image
    K: number of foreground classes (labels 1..K)
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Protocol, Sequence

import torch
from torch import nn
from tqdm import tqdm

__all__ = ["inference_on_dataset"]


class Evaluator(Protocol):
    """What :func:`inference_on_dataset` needs from an evaluator (e.g. ``COCOEvaluator``)."""

    def reset(self) -> None: ...

    def process(self, targets: Sequence[dict], outputs: Sequence[dict]) -> None: ...

    def evaluate(self) -> dict[str, Any]: ...


@torch.no_grad()
def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable,
    evaluator: Evaluator,
    *,
    device: torch.device | str,
    progress: bool = True,
    desc: str = "eval",
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run ``model`` on every batch of ``data_loader`` and return ``evaluator``'s metrics.

    The model is put in eval mode for the pass (proposal counts and the output format differ between
    train and eval in Faster R-CNN) and then returned to the mode it was in, so calling this from
    inside a training loop does not silently leave the model in eval mode.

    Args:
        model: ``model(images) -> list of N dicts(boxes=[D, 4] xyxy in original pixels,
            labels=[D], scores=[D])`` in eval mode.
        data_loader: yields ``(images, targets)``: N float tensors [3, H, W] and N target dicts,
            each with ``image_id``.
        evaluator: reset at the start, fed every batch, asked to ``evaluate()`` at the end.
        device: where the model lives; images are moved there.
        progress: show a tqdm bar.
        desc: label of the bar.
        amp_dtype: run the forward passes under ``torch.autocast`` in this dtype (bfloat16 /
            float16; None = float32), as training does with ``solver.amp``. The model takes its
            scores and box deltas in float32 either way.

    Returns:
        ``evaluator.evaluate()`` plus ``images_per_second``: end-to-end throughput of the loop (data
        loading, transfers and forward passes; not the scoring itself), the speed a user waits on.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    evaluator.reset()
    num_images = 0
    try:
        total = len(data_loader) if hasattr(data_loader, "__len__") else None
        start = time.perf_counter()
        with tqdm(data_loader, total=total, desc=desc, unit="batch", disable=not progress) as bar:
            for images, targets in bar:
                images = [image.to(device, non_blocking=True) for image in images]
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    if all("proposals" in t for t in targets):  # Fast R-CNN: the split's proposal file
                        outputs = model(images, proposals=[t["proposals"].to(device) for t in targets])
                    else:
                        outputs = model(images)
                # .cpu() waits for the GPU, so the timer below measures finished work, and the
                # evaluator holding outputs for the whole dataset costs host memory, not GPU memory.
                outputs = [{key: value.cpu() for key, value in out.items()} for out in outputs]
                for out in outputs:  # float32 results whatever the autocast dtype
                    for key in ("boxes", "scores"):
                        if key in out and out[key].is_floating_point():
                            out[key] = out[key].float()
                evaluator.process(targets, outputs)
                num_images += len(images)
        elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)

    metrics = dict(evaluator.evaluate())
    # max() guards a zero elapsed time on a coarse clock with an empty or trivial loader.
    metrics["images_per_second"] = num_images / max(elapsed, 1e-9)
    return metrics
