"""A trained detector run on images as users hold them: paths, PIL images, numpy arrays, tensors.

    import detector
    model = detector.load("outputs/train/RUN/model_final.pth", device="auto")
    (result,) = model.predict("photo.jpg")
    result["boxes"], result["scores"], result["labels"], result["class_names"]

torchvision's detectors take a list of float ``[3, H, W]`` tensors in [0, 1]; detectron2's
``DefaultPredictor`` and ultralytics' ``predict`` take files and arrays. :class:`Predictor` accepts
all of these, converts each to the model's input (RGB, float in [0, 1]) and returns, per image, the
boxes in the image's own pixels. It holds a built model and its class names; building it from a
checkpoint is the config layer's job (``detector.load`` = :func:`detector.cli.api.load`).

Shape shorthand:
    H, W: one image's height and width in pixels; D: its detections (after ``score_thresh``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from detector.data.image_io import read_rgb
from detector.errors import DatasetError

__all__ = ["Predictor", "to_image_tensor"]


def to_image_tensor(image: Any) -> Tensor:
    """One image as the model's input: float32 ``[3, H, W]`` RGB in [0, 1], on the CPU.

    Accepted: a path (``str`` or ``Path``, read with EXIF orientation applied); a PIL image (any mode);
    a numpy array ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]`` (RGB order; uint8 in 0..255, floats in
    [0, 1]); a tensor ``[3, H, W]`` (uint8, or float in [0, 1]).
    """
    if isinstance(image, (str, Path)):
        return torch.from_numpy(read_rgb(image).transpose(2, 0, 1).copy()).float().div_(255.0)
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()).float().div_(255.0)
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise DatasetError(f"a numpy image must be [H, W], [H, W, 3] or [H, W, 4]; got shape {tuple(image.shape)}")
        tensor = torch.from_numpy(np.ascontiguousarray(array[:, :, :3].transpose(2, 0, 1)))
        return _scaled(tensor, f"numpy array of shape {tuple(image.shape)}")
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise DatasetError(f"a tensor image must be [3, H, W] (RGB); got shape {tuple(image.shape)}")
        return _scaled(image.detach().cpu(), f"tensor of shape {tuple(image.shape)}")
    raise DatasetError(
        f"cannot read an image from a {type(image).__name__}; pass a path, a PIL image, a numpy array or a tensor"
    )


def _scaled(tensor: Tensor, what: str) -> Tensor:
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    if not tensor.is_floating_point():
        raise DatasetError(f"{what}: pixel type {tensor.dtype}; use uint8 (0..255) or floats in [0, 1]")
    tensor = tensor.float()
    if tensor.numel() and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
        raise DatasetError(f"{what}: float pixels outside [0, 1]; divide by 255 (or pass uint8)")
    return tensor


class Predictor:
    """A detector in eval mode with its class names; :meth:`predict` runs it on images."""

    def __init__(self, *, model: nn.Module, class_names: Sequence[str], device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.class_names = list(class_names)
        self.device = device

    @torch.no_grad()
    def predict(self, images: Any, *, score_thresh: float = 0.0, batch_size: int = 4) -> list[dict[str, Any]]:
        """Detections for one image or a list of images (see :func:`to_image_tensor` for the kinds).

        Returns:
            One dict per image: ``boxes`` float32 [D, 4] xyxy in the image's pixels, ``scores``
            float32 [D], ``labels`` int64 [D] (1..K) and ``class_names`` (D names), highest score first.
        """
        if not 0.0 <= float(score_thresh) <= 1.0:
            raise ValueError(f"score_thresh must be in [0, 1], got {score_thresh}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        single = isinstance(images, (str, Path, Image.Image, np.ndarray, Tensor))
        items = [images] if single else list(images)
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), int(batch_size)):
            tensors = [to_image_tensor(image).to(self.device) for image in items[start : start + int(batch_size)]]
            for out in self.model(tensors):
                keep = out["scores"] >= float(score_thresh)
                # stable: equal scores keep the model's order, whatever the threshold kept
                order = torch.argsort(out["scores"][keep], descending=True, stable=True)
                boxes, scores, labels = (out[k][keep][order].cpu() for k in ("boxes", "scores", "labels"))
                results.append({
                    "boxes": boxes, "scores": scores, "labels": labels,
                    "class_names": [self.class_names[int(label) - 1] for label in labels],
                })
        return results

    def __call__(self, images: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self.predict(images, **kwargs)

    def __repr__(self) -> str:
        names = ", ".join(self.class_names[:5]) + ("..." if len(self.class_names) > 5 else "")
        return f"Predictor({len(self.class_names)} classes: {names}; {self.device})"
