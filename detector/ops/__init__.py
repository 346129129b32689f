"""RoI operators: RoIPool and RoIAlign, with the seed's variants, in torchvision's calling convention."""

from detector.ops.roi_align import RoIAlign, roi_align, roi_align_samples, sample_points
from detector.ops.roi_pool import RoIPool, roi_pool

__all__ = ["RoIAlign", "RoIPool", "roi_align", "roi_align_samples", "roi_pool", "sample_points"]
