"""RoIAlign (He et al., Mask R-CNN 2017, section 3) behind the project's operator interface.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, k x k: output size

RoIAlign keeps the RoI's real-valued coordinates (no quantization, the seed's point) and computes each
output bin from ``sampling_ratio`` x ``sampling_ratio`` bilinearly interpolated points. For now this
delegates to ``torchvision.ops.roi_align`` (average of the samples, points centred in sub-bins); the
seed's max-of-samples and interior-point variants are the subject of a separate issue.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import roi_align as _tv_roi_align

from detector.ops._utils import BoxesType, pair


def roi_align(
    input: Tensor,
    boxes: BoxesType,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Bilinear RoIAlign.

    Args:
        input: [N, C, H, W] feature map.
        boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N tensors [L, 4], input-image pixels.
        output_size: k or (kh, kw).
        spatial_scale: 1 / stride of the feature map.
        sampling_ratio: samples per bin side; <= 0 means adaptive, ceil(roi_size / output_size).
        aligned: shift the RoI by -0.5 cell so that a sample at continuous (c + 0.5) hits cell c's
            value exactly (Detectron2's ROIAlignV2). ``False`` reproduces the original Mask R-CNN op.

    Returns:
        [K, C, kh, kw]
    """
    return _tv_roi_align(input, boxes, pair(output_size), spatial_scale, sampling_ratio, aligned)


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`; every option is explicit (libraries disagree on defaults)."""

    def __init__(
        self,
        *,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool,
    ) -> None:
        super().__init__()
        self.output_size = pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def forward(self, input: Tensor, boxes: BoxesType) -> Tensor:
        return roi_align(
            input, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
