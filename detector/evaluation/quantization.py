"""The seed's error, counted: what RoIPool's quantization does to each ground-truth box.

For a box in (resized) image pixels, at a backbone stride and pooler output size ``k``, the region
RoIPool actually reads, under each rule of :mod:`detector.ops.roi_pool`:

``round`` (Fast R-CNN, torchvision): the corners are rounded to cells, ``x1' = round(x1 / stride)``,
    ``x2' = round(x2 / stride)``, and the bins cover cells ``x1' .. x2'`` (inclusive): the region is
    ``[x1', x2' + 1)`` cells.
``floor`` (the seed's double quantization): ``X = floor(x1 / stride)``, ``W = floor(w / stride)``,
    bin size ``bw = max(floor(W / k), 1)``: the region is ``[X, X + k * bw)`` cells, and the rest of
    the box is cropped.

Per box: the origin shift (pixels from the box's corner to the region's, ``dx, dy``), the fraction
of the box the region cuts away (the seed's "missing portion of the boy") and the fraction of the
region that lies outside the box (the "added portion of the father").

Worked example (the seed, ``feature_map_18x25.csv``): box x, y, w, h = 300, 210, 230, 180 at stride 32
and k = 3: ``x / 32 = 9.375 -> 9``, ``y / 32 = 6.5625 -> 6``, ``w / 32 = 7.1875 -> 7``,
``h / 32 = 5.625 -> 5``; bins 7 / 3 -> 2 by 5 / 3 -> 1: cells 9..14 x 6..8 are read.

Shape shorthand:
    B: boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detector.ops._utils import round_half_away

__all__ = ["RULES", "QuantizedBox", "by_size", "quantize_boxes", "resized_gt_boxes", "size_bucket", "summarize"]

RULES = ("round", "floor")


@dataclass
class QuantizedBox:
    """Per-box tensors [B] of one rule (pixels unless said otherwise)."""

    region: Tensor  # [B, 4] xyxy pixels: what RoIPool reads
    origin_cells: Tensor  # [B, 2] the box's origin in cells, before quantization (9.375, 6.5625)
    size_cells: Tensor  # [B, 2] the box's size in cells, before quantization (7.1875, 5.625)
    quantized_origin: Tensor  # [B, 2] cells after (9, 6)
    quantized_size: Tensor  # [B, 2] cells after (7, 5); floor: before the bin floor
    shift: Tensor  # [B, 2] region origin - box origin, pixels (dx, dy)
    lost: Tensor  # [B] fraction of the box outside the region
    added: Tensor  # [B] fraction of the region outside the box


def _area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def quantize_boxes(boxes: Tensor, *, stride: int, output_size: int, rule: str) -> QuantizedBox:
    """What RoIPool reads for boxes [B, 4] xyxy (pixels of the image the backbone sees)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    s = 1.0 / float(stride)
    origin = boxes[:, :2] * s
    size = (boxes[:, 2:] - boxes[:, :2]) * s
    if rule == "round":
        # torchvision's roi_pool: round() of the scaled corners (half away from zero, as C's round).
        lo = round_half_away(origin)
        hi_corner = boxes[:, 2:] * s
        hi = round_half_away(hi_corner) + 1  # inclusive end cell
        quantized_size = hi - lo
    else:
        lo = torch.floor(origin)
        quantized_size = torch.floor(size)
        bins = torch.clamp(torch.floor(quantized_size / output_size), min=1)
        hi = lo + output_size * bins
    region = torch.cat([lo, hi], dim=1) * float(stride)
    inter = torch.cat([torch.maximum(region[:, :2], boxes[:, :2]), torch.minimum(region[:, 2:], boxes[:, 2:])], dim=1)
    inter_area = _area(inter)
    box_area, region_area = _area(boxes), _area(region)
    lost = 1 - inter_area / box_area.clamp(min=1e-12)
    added = 1 - inter_area / region_area.clamp(min=1e-12)
    return QuantizedBox(
        region=region, origin_cells=origin, size_cells=size, quantized_origin=lo, quantized_size=quantized_size,
        shift=region[:, :2] - boxes[:, :2], lost=lost, added=added,
    )


def size_bucket(area: float) -> str:
    """COCO's object sizes by area in original pixels: small < 32^2 <= medium < 96^2 <= large."""
    return "small" if area < 32 ** 2 else ("medium" if area < 96 ** 2 else "large")


def summarize(values: Tensor) -> dict[str, float]:
    """mean, median and 90th percentile of a [B] tensor (NaN when empty)."""
    if values.numel() == 0:
        return {"mean": math.nan, "median": math.nan, "p90": math.nan}
    v = values.to(torch.float64)
    return {"mean": float(v.mean()), "median": float(v.median()), "p90": float(torch.quantile(v, 0.9))}


def resized_gt_boxes(coco: Any, target_size: Callable[[int, int], tuple[int, int]]) -> tuple[Tensor, list[str]]:
    """Every counted ground-truth box of ``coco`` in the pixels the backbone sees, and its COCO size bucket.

    ``target_size(h, w)`` is the model's resize (its transform at test time); crowd and ``ignore`` boxes
    are left out (they are not objects the detector is scored on).
    """
    from detector.data.dataset import is_ignored

    boxes, buckets = [], []
    for ann in coco.dataset["annotations"]:
        if is_ignored(ann, difficult=False) or ann["image_id"] not in coco.imgs:
            continue
        info = coco.imgs[ann["image_id"]]
        nh, nw = target_size(int(info["height"]), int(info["width"]))
        sx, sy = nw / info["width"], nh / info["height"]
        x, y, w, h = ann["bbox"]
        boxes.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])
        buckets.append(size_bucket(w * h))
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4), buckets


def by_size(boxes: Tensor, buckets: list[str], *, stride: int, output_size: int, rule: str = "round") -> dict[str, dict]:
    """Per size bucket (and ``all``): box count and the mean origin shift, fraction cut away and fraction added."""
    q = quantize_boxes(boxes, stride=stride, output_size=output_size, rule=rule)
    per = {"shift_px": q.shift.norm(dim=1), "lost": q.lost, "added": q.added}
    out = {}
    for size in ("small", "medium", "large", "all"):
        mask = torch.tensor([size == "all" or b == size for b in buckets], dtype=torch.bool)
        out[size] = {"count": int(mask.sum()), **{k: summarize(v[mask])["mean"] for k, v in per.items()}}
    return out
