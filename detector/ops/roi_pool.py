"""RoIPool (Fast R-CNN, Girshick 2015, section 2.1) behind the project's operator interface.

Shape shorthand:
    N: images, C: channels, H, W: feature-map size
    K: RoIs in the batch, k x k: output size

For now this delegates to ``torchvision.ops.roi_pool`` (Fast R-CNN's "round" quantization: the RoI is
rounded to feature cells and split into bins with floor/ceil so that the bins cover it). The seed's
"floor" double quantization variant is the subject of a separate issue and will live here.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import roi_pool as _tv_roi_pool

from detector.ops._utils import BoxesType, pair


def roi_pool(
    input: Tensor, boxes: BoxesType, output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """Max-pool each RoI into a fixed ``output_size`` grid.

    Args:
        input: [N, C, H, W] feature map.
        boxes: [K, 5] (batch index, x1, y1, x2, y2) or a list of N tensors [L, 4], in input-image
            pixels (multiplied by ``spatial_scale`` to reach feature cells).
        output_size: k or (kh, kw).
        spatial_scale: 1 / stride of the feature map (1/32 for the seed's VGG16 with 5 pools).

    Returns:
        [K, C, kh, kw]
    """
    return _tv_roi_pool(input, boxes, pair(output_size), spatial_scale)


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`; ``spatial_scale`` is explicit (never guessed from shapes)."""

    def __init__(self, *, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = pair(output_size)
        self.spatial_scale = float(spatial_scale)

    def forward(self, input: Tensor, boxes: BoxesType) -> Tensor:
        return roi_pool(input, boxes, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
