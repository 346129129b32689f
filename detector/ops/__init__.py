"""RoI operators: RoIPool and RoIAlign with torchvision's calling convention."""

from detector.ops.roi_align import RoIAlign, roi_align
from detector.ops.roi_pool import RoIPool, roi_pool

__all__ = ["RoIAlign", "RoIPool", "roi_align", "roi_pool"]
