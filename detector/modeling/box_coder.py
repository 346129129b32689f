"""Box coder: the (dx, dy, dw, dh) parameterisation of R-CNN (Girshick et al. 2014, appendix C).

Shape shorthand:
    R: number of boxes (anchors or proposals)
    K: number of classes including background (class-specific deltas have 4*K columns)

A regression target says how to move and rescale a reference box (anchor or proposal) onto a ground
truth box, in units of the reference's own size, so one regressor works for small and large boxes:

    dx = wx * (gx - px) / pw        dw = ww * log(gw / pw)
    dy = wy * (gy - py) / ph        dh = wh * log(gh / ph)

The weights scale the targets to roughly unit variance: (1, 1, 1, 1) for the RPN and (10, 10, 5, 5)
for the Fast R-CNN head, as in py-faster-rcnn's BBOX_NORMALIZE_STDS (0.1, 0.1, 0.2, 0.2).

Written here rather than imported because torchvision keeps its BoxCoder in a private module
(``torchvision.models.detection._utils``); tests check ours against it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# exp(dw) is clamped so a wild prediction early in training cannot overflow to inf: boxes can grow
# at most 1000/16 times their reference (detectron2's and torchvision's _DEFAULT_SCALE_CLAMP).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes as deltas relative to reference boxes, and decodes them back."""

    def __init__(
        self,
        *,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder weights must have 4 values (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def encode(self, reference_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Deltas that turn ``reference_boxes`` [R, 4] into ``gt_boxes`` [R, 4] (both xyxy) -> [R, 4]."""
        wx, wy, ww, wh = self.weights
        pw = reference_boxes[:, 2] - reference_boxes[:, 0]
        ph = reference_boxes[:, 3] - reference_boxes[:, 1]
        px = reference_boxes[:, 0] + 0.5 * pw
        py = reference_boxes[:, 1] + 0.5 * ph
        gw = gt_boxes[:, 2] - gt_boxes[:, 0]
        gh = gt_boxes[:, 3] - gt_boxes[:, 1]
        gx = gt_boxes[:, 0] + 0.5 * gw
        gy = gt_boxes[:, 1] + 0.5 * gh
        return torch.stack(
            (
                wx * (gx - px) / pw,
                wy * (gy - py) / ph,
                ww * torch.log(gw / pw),
                wh * torch.log(gh / ph),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Apply ``deltas`` [R, 4*K] to ``reference_boxes`` [R, 4] -> boxes [R, 4*K] (xyxy)."""
        deltas = deltas.to(reference_boxes.dtype)
        wx, wy, ww, wh = self.weights
        pw = (reference_boxes[:, 2] - reference_boxes[:, 0])[:, None]
        ph = (reference_boxes[:, 3] - reference_boxes[:, 1])[:, None]
        px = reference_boxes[:, 0, None] + 0.5 * pw
        py = reference_boxes[:, 1, None] + 0.5 * ph

        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        cx = dx * pw + px
        cy = dy * ph + py
        w = torch.exp(dw) * pw
        h = torch.exp(dh) * ph
        boxes = torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=2)
        return boxes.reshape(deltas.shape)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"
