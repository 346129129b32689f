from detector.modeling.roi_heads.box_head import FC2BoxHead
from detector.modeling.roi_heads.fast_rcnn import FastRCNNPredictor, fast_rcnn_inference, fast_rcnn_losses
from detector.modeling.roi_heads.roi_heads import RoIHeads

__all__ = ["FC2BoxHead", "FastRCNNPredictor", "RoIHeads", "fast_rcnn_inference", "fast_rcnn_losses"]
