from detector.modeling.rpn.anchor_generator import AnchorGenerator
from detector.modeling.rpn.rpn import RPN
from detector.modeling.rpn.rpn_head import RPNHead

__all__ = ["AnchorGenerator", "RPN", "RPNHead"]
