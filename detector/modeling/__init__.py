"""Model parts; each takes already-built sub-parts through keyword-only constructors."""

from detector.modeling.box_coder import BoxCoder
from detector.modeling.faster_rcnn import FasterRCNN
from detector.modeling.matcher import Matcher
from detector.modeling.sampler import BalancedPositiveNegativeSampler
from detector.modeling.transform import DetectionTransform, ImageList

__all__ = [
    "BalancedPositiveNegativeSampler", "BoxCoder", "DetectionTransform", "FasterRCNN", "ImageList",
    "Matcher",
]
