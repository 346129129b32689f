"""Run an exported detector (:mod:`detector.export`): an ONNX file in onnxruntime, or a torch.export program.

Shape shorthand:
    H, W: an image's size;  D: the program's fixed number of output rows (padding has label 0)

The program file and the JSON written beside it are all that is needed; the JSON is read as data
(class names, the input size rule), never as code. :class:`ExportedPredictor` gives the same results
as :class:`detector.predictor.Predictor` on a checkpoint: per image the boxes in its own pixels, the
scores, the labels and the class names, highest score first, the padding rows dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from detector.errors import ConfigError
from detector.export import FORMATS
from detector.predictor import to_image_tensor

__all__ = ["ExportedPredictor"]


class ExportedPredictor:
    """An exported program and its description; :meth:`predict` runs it on images (on the CPU)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        described = self.path.with_suffix(".json")
        if not self.path.is_file():
            raise ConfigError(f"{self.path}: no such file (tools/export.py writes one)")
        try:
            self.description = json.loads(described.read_text())
            self.class_names = [str(n) for n in self.description["class_names"]]
            self.format = str(self.description["format"])
            size = self.description["input"]["size"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{described}: not the description tools/export.py writes beside {self.path.name} ({e})") from None
        if self.format not in FORMATS or self.path.suffix != FORMATS[self.format]:
            raise ConfigError(f"{described}: format {self.format!r} does not match {self.path.name}")
        self.fixed_size = tuple(int(v) for v in size) if isinstance(size, list) else None
        if self.format == "onnx":
            try:
                import onnxruntime
            except ImportError:
                raise ConfigError(f'{self.path}: running ONNX needs onnxruntime: pip install -e ".[deploy]"') from None
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        else:
            self._program = torch.export.load(str(self.path)).module()

    def run(self, image: Tensor, *, name: str = "the image") -> dict[str, Tensor]:
        """One image [3, H, W] float in 0..1 -> boxes [d, 4], scores [d], labels [d] (padding dropped)."""
        if self.fixed_size is not None and tuple(image.shape[-2:]) != self.fixed_size:
            h, w = self.fixed_size
            raise ConfigError(f"{name} is {image.shape[-2]} x {image.shape[-1]} pixels; {self.path.name} was exported "
                              f"for {h} x {w} images only: export again with dynamic=true")
        if self.format == "onnx":
            boxes, scores, labels = (torch.from_numpy(a) for a in self._session.run(None, {"image": image.numpy()}))
        else:
            with torch.no_grad():
                boxes, scores, labels = self._program(image)
        real = labels > 0
        return {"boxes": boxes[real], "scores": scores[real], "labels": labels[real]}

    def predict(self, images: Any, *, score_thresh: float = 0.0) -> list[dict[str, Any]]:
        """As :meth:`detector.predictor.Predictor.predict`: one dict per image, highest score first."""
        single = isinstance(images, (str, Path, Image.Image, np.ndarray, Tensor))
        results = []
        for image in [images] if single else list(images):
            out = self.run(to_image_tensor(image), name=str(image) if isinstance(image, (str, Path)) else "the image")
            keep = out["scores"] >= float(score_thresh)
            order = torch.argsort(out["scores"][keep], descending=True)
            boxes, scores, labels = (out[k][keep][order] for k in ("boxes", "scores", "labels"))
            results.append({"boxes": boxes, "scores": scores, "labels": labels,
                            "class_names": [self.class_names[int(label) - 1] for label in labels]})
        return results

    def __repr__(self) -> str:
        return f"ExportedPredictor({self.path.name}, {self.format}, {len(self.class_names)} classes)"
