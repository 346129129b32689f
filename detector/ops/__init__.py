"""RoI operators: RoIPool, RoIWarp and RoIAlign, with the seed's variants, in torchvision's calling convention."""

from detector.ops.roi_align import RoIAlign, roi_align, roi_align_samples, sample_points
from detector.ops.roi_pool import RoIPool, roi_pool
from detector.ops.roi_warp import RoIWarp, roi_warp

__all__ = ["RoIAlign", "RoIPool", "RoIWarp", "roi_align", "roi_align_samples", "roi_pool", "roi_warp", "sample_points"]
