"""detector: a readable, complete Fast/Faster R-CNN framework with switchable RoIPool / RoIAlign."""

__version__ = "0.1.0"
