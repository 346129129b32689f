from detector.modeling.backbone.vgg16 import VGG16Backbone

__all__ = ["VGG16Backbone"]
