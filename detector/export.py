"""Export a trained detector as a program that runs without this package: ONNX or torch.export.

Shape shorthand:
    H, W: the input image's size (any, unless exported with ``dynamic=False``)
    D: ``detections_per_img`` rows of output (the real detections first, then padding)

The exported program is the model's own inference (the same modules, the same forward), traced by
``torch.export`` -- the ONNX file is that program translated by ``torch.onnx.export(dynamo=True)``.
What makes it exportable lives in the model, switched on only while exporting
(:func:`detector.ops.dense.exporting`): the RoI operators in fixed-shape form (every mode of the
seed: RoIAlign avg / max, centered / interior, aligned; RoIPool round / floor; RoIWarp), the proposals
and the detections padded to fixed counts, and the resize written so that it holds for any size.

Signature of the program (also written to the JSON beside it):
    input  ``image``:  float32 [3, H, W], RGB in 0..1 (the normalisation and the resize are inside)
    output ``boxes`` float32 [D, 4] xyxy in the input's pixels, ``scores`` float32 [D],
           ``labels`` int64 [D] in 1..K; rows with label 0 are padding (fewer than D detections).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.errors import ConfigError

__all__ = ["FORMATS", "SinglePicture", "export_detector"]

FORMATS = {"onnx": ".onnx", "torch_export": ".pt2"}


class SinglePicture(nn.Module):
    """The detector on one image, with tensors in and out (an exported program's signature)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        (detections,) = self.model([image])
        return detections["boxes"], detections["scores"], detections["labels"]


def export_detector(
    model: nn.Module,
    path: str | Path,
    *,
    format: str,
    class_names: Sequence[str],
    example_size: tuple[int, int],
    dynamic: bool = True,
    opset: int = 18,
) -> Path:
    """Write ``model`` (eval mode, CPU) as ``path`` in ``format`` and its description as ``path``.json.

    ``example_size`` is the (H, W) traced; with ``dynamic`` the program takes any size from 32 to
    4096 pixels a side, else exactly ``example_size``.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    if getattr(model, "rpn", None) is None:
        raise ConfigError("a Fast R-CNN model (rpn=None) takes its proposals from a file, which an exported "
                          "program cannot read: export a Faster R-CNN (model=faster_rcnn_vgg16), or dump its "
                          "proposals with tools/dump_proposals.py and keep the checkpoint")
    path = Path(path)
    if path.suffix != FORMATS[format]:
        raise ValueError(f"a {format} program is written to a {FORMATS[format]} file, got {path.name}")
    model = model.eval().cpu()
    program = SinglePicture(model).eval()
    example = (torch.rand(3, *example_size, generator=torch.Generator().manual_seed(0)),)
    shapes = None
    if dynamic:
        height, width = torch.export.Dim("height", min=32, max=4096), torch.export.Dim("width", min=32, max=4096)
        shapes = ({1: height, 2: width},)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporters' own chatter (torchvision's deprecation notice for its NMS shape function, the ONNX
    # optimizer's per-initializer INFO lines) is not the user's business; errors still surface.
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torchvision")
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*")
        exported = torch.export.export(program, example, dynamic_shapes=shapes, strict=False)
        if format == "torch_export":
            torch.export.save(exported, str(path))
        else:
            onnx_program = torch.onnx.export(exported, input_names=["image"], output_names=["boxes", "scores", "labels"],
                                             opset_version=int(opset), dynamo=True, verbose=False)
            onnx_program.save(str(path))
    transform, heads = model.transform, model.roi_heads
    description = {
        "format": format,
        "program": path.name,
        "input": {"name": "image", "dtype": "float32", "layout": "[3, H, W] RGB in 0..1",
                  "size": "any (32..4096 a side)" if dynamic else list(example_size)},
        "outputs": {"boxes": "float32 [D, 4] xyxy, input pixels", "scores": "float32 [D]",
                    "labels": "int64 [D], 1..K; 0 = padding row"},
        "detections_per_img": heads.detections_per_img,
        "class_names": list(class_names),
        "resize": {"min_size": transform.test_min_size, "max_size": transform.test_max_size,
                   "size_divisibility": transform.size_divisibility},
        "pixel_mean": transform.pixel_mean.flatten().tolist(), "pixel_std": transform.pixel_std.flatten().tolist(),
        "score_thresh": heads.score_thresh,
        "pooler": repr(heads.pooler),
        "opset": int(opset) if format == "onnx" else None,
    }
    path.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    return path
