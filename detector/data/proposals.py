"""Precomputed proposals (Fast R-CNN): one file per split, keyed by image.

File format, ``.pt`` (read with ``torch.load(weights_only=True)``: a proposal file cannot run code)::

    {"image_ids": [int, ...],                  # the dataset's image ids (or file names, as strings)
     "boxes": [float32 [P_i, 4], ...],         # xyxy in ORIGINAL image pixels, one tensor per image
     "scores": [float32 [P_i], ...]}           # optional: objectness, higher = better

or ``.json``: ``{"<image id or file name>": {"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}, ...}``.
``tools/dump_proposals.py`` writes the ``.pt`` form; detectron2's precomputed-proposal pickles
(``ids``, ``boxes``, ``objectness_logits``, ``bbox_mode``) go through
:func:`from_detectron2` (an explicit conversion: a pickle can run code, so it is never read implicitly).

Loading (:func:`load_proposals`, shared by training and evaluation): keys are matched to the dataset's
images by id or by file name (with or without folders and extension); every image of the split must
have an entry (the missing ones are counted and the first named); boxes must be ``[P, 4]`` and
finite. Then, per image: sorted by score when there are scores, the top ``topk`` kept (detectron2's
``PRECOMPUTED_PROPOSAL_TOPK_TRAIN/TEST``), clipped to the image, and boxes under 1 px wide or high
dropped (one warning per file counts them).

Shape shorthand:
    P: proposals of one image.
"""

from __future__ import annotations

import codecs
import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detector.errors import DatasetError

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as np_multiarray

__all__ = ["from_detectron2", "load_proposals", "save_proposals"]

_MIN_SIDE = 1.0  # px, as the dataset's box rule
_SHOWN = 5


def save_proposals(path: str | Path, proposals: Mapping[int | str, tuple[Tensor, Tensor | None]]) -> Path:
    """Write ``{image id or file name: (boxes [P, 4], scores [P] or None)}`` as a ``.pt`` proposal file."""
    from detector.utils.io import atomic_torch_save

    ids = sorted(proposals, key=lambda i: (isinstance(i, str), i))
    state = {
        "image_ids": [i if isinstance(i, str) else int(i) for i in ids],
        "boxes": [proposals[i][0].detach().to(torch.float32).cpu().reshape(-1, 4) for i in ids],
    }
    if all(proposals[i][1] is not None for i in ids):
        state["scores"] = [proposals[i][1].detach().to(torch.float32).cpu().reshape(-1) for i in ids]
    path = Path(path)
    atomic_torch_save(state, path)
    return path


def _read(path: Path) -> dict[str, tuple[Any, Any]]:
    """key (str) -> (boxes, scores or None), as stored."""
    if not path.is_file():
        raise DatasetError(f"{path}: proposal file not found")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) and "boxes" in v for v in data.values()):
            raise DatasetError(f'{path}: expected {{"<image id>": {{"boxes": [[x1, y1, x2, y2], ...], "scores": [...]}}}}')
        return {str(k): (v["boxes"], v.get("scores")) for k, v in data.items()}
    if path.suffix in (".pt", ".pth"):
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (torch raises many types for foreign files)
            raise DatasetError(f"{path}: not a proposal file ({type(err).__name__}); see detector/data/proposals.py") from None
        if not isinstance(data, dict) or not {"image_ids", "boxes"} <= data.keys() or len(data["image_ids"]) != len(data["boxes"]):
            raise DatasetError(f"{path}: expected a dict with 'image_ids' and 'boxes' of equal length (and optional 'scores')")
        scores = data.get("scores") or [None] * len(data["boxes"])
        return {str(i): (b, s) for i, b, s in zip(data["image_ids"], data["boxes"], scores)}
    raise DatasetError(f"{path}: unknown proposal file format {path.suffix!r}; use .pt or .json (detectron2 .pkl: "
                       f"convert it with tools/dump_proposals.py convert=FILE)")


def load_proposals(
    path: str | Path,
    images: Mapping[int, Mapping[str, Any]],
    *,
    topk: int | None = None,
    ids: list[int] | None = None,
) -> dict[int, Tensor]:
    """Proposals of a split, per image id: float32 ``[P, 4]`` xyxy, score-sorted, top-k, clipped.

    Args:
        path: The proposal file.
        images: The dataset's images (``coco.imgs``: id -> ``file_name, width, height``).
        topk: Proposals kept per image (the highest scoring; the first ones without scores).
        ids: The images that need proposals (default: all of ``images``).

    Raises:
        DatasetError: Missing or unknown file, images of the split without proposals, boxes that
            are not ``[P, 4]``, or non-finite boxes (naming the file and the image).
    """
    path = Path(path)
    stored = _read(path)
    by_key: dict[str, int] = {}
    for image_id, info in images.items():
        name = Path(str(info["file_name"]))
        for key in (str(image_id), str(info["file_name"]), name.name, name.stem):
            by_key.setdefault(key, image_id)
    found: dict[int, tuple[Any, Any]] = {}
    for key, value in stored.items():
        if key in by_key:
            found[by_key[key]] = value
    wanted = list(images) if ids is None else list(ids)
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(str(images[i].get("file_name", i)) for i in missing[:_SHOWN])
        raise DatasetError(
            f"{path}: no proposals for {len(missing)} of the split's {len(wanted)} images (first: {shown}); "
            f"was it made for another split?"
        )
    out: dict[int, Tensor] = {}
    dropped = clipped = 0
    for image_id in wanted:
        raw_boxes, raw_scores = found[image_id]
        where = f"{path}: image {images[image_id].get('file_name', image_id)}"
        boxes = torch.as_tensor(raw_boxes, dtype=torch.float32)
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise DatasetError(f"{where}: boxes of shape {list(boxes.shape)}, expected [P, 4] xyxy")
        if not torch.isfinite(boxes).all():
            raise DatasetError(f"{where}: non-finite proposal boxes")
        if raw_scores is not None:
            scores = torch.as_tensor(raw_scores, dtype=torch.float32).reshape(-1)
            if len(scores) != len(boxes):
                raise DatasetError(f"{where}: {len(scores)} scores for {len(boxes)} boxes")
            boxes = boxes[torch.argsort(scores, descending=True, stable=True)]
        if topk is not None:
            boxes = boxes[: int(topk)]
        width, height = float(images[image_id]["width"]), float(images[image_id]["height"])
        inside = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                              boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
        clipped += int((inside != boxes).any(dim=1).sum())
        boxes = inside
        keep = ((boxes[:, 2] - boxes[:, 0]) >= _MIN_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= _MIN_SIDE)
        dropped += int((~keep).sum())
        out[image_id] = boxes[keep]
    if dropped or clipped:
        warnings.warn(
            f"{path}: {clipped} proposal(s) clipped to their image, {dropped} under 1 px after clipping dropped",
            stacklevel=3,
        )
    return out


class _ProposalUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and detectron2's ``BoxMode`` and nothing else.

    A pickle names the callables that rebuild it, so a plain ``pickle.load`` of a stranger's file
    runs any code the file names. Python's documented remedy ("Restricting Globals" in the pickle
    docs) is an allowlist in ``find_class``: here the few globals numpy (1.x and 2.x) and detectron2
    write into a precomputed-proposal file. ``BoxMode`` becomes its integer value, so detectron2
    need not be installed.
    """

    _NUMPY = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np_multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np_multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): np_multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): np_multiarray.scalar,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._NUMPY:
            return self._NUMPY[(module, name)]
        if module == "detectron2.structures.boxes" and name == "BoxMode":
            return int
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a proposal file never holds")


def from_detectron2(pkl: str | Path, out: str | Path) -> Path:
    """Convert detectron2's precomputed proposals into a ``.pt`` proposal file.

    detectron2 stores ``{"ids": [...], "boxes": [array [P, 4]], "objectness_logits": [array [P]],
    "bbox_mode": BoxMode}`` (``XYXY_ABS`` = 0, ``XYWH_ABS`` = 1) as a pickle. It is read by
    :class:`_ProposalUnpickler`, which can rebuild only numpy arrays and ``BoxMode``: a file that
    names anything else is refused, so a stranger's file cannot run code.
    """
    try:
        with open(pkl, "rb") as f:
            data = _ProposalUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DatasetError(f"{pkl}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DatasetError(f"{pkl}: not a detectron2 proposal file, refused unread ({e})") from None
    if not isinstance(data, dict) or not {"ids", "boxes"} <= data.keys():
        raise DatasetError(f"{pkl}: not a detectron2 proposal file (expected 'ids' and 'boxes')")
    mode = int(getattr(data.get("bbox_mode", 0), "value", data.get("bbox_mode", 0)))
    if mode not in (0, 1):
        raise DatasetError(f"{pkl}: bbox_mode {mode} is neither XYXY_ABS (0) nor XYWH_ABS (1)")
    proposals = {}
    scores = data.get("objectness_logits") or [None] * len(data["boxes"])
    for image_id, boxes, logits in zip(data["ids"], data["boxes"], scores):
        b = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if mode == 1:
            b = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
        proposals[image_id] = (b, None if logits is None else torch.as_tensor(logits, dtype=torch.float32))
    try:
        keyed = {int(k): v for k, v in proposals.items()}
    except (TypeError, ValueError):  # file-name keys: store them as given
        keyed = proposals  # type: ignore[assignment]
    return save_proposals(out, keyed)
