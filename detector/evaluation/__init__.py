"""Evaluation: COCO box AP through pycocotools, VOC AP, the detailed analysis, and the inference loop.

Shape shorthand:
    N: number of images
    D: number of detections in one image
    K: number of foreground classes (labels 1..K)
"""

from detector.evaluation.coco_evaluator import (
    AR_KEYS,
    COCO_KEYS,
    METRIC_KEYS,
    COCOEvaluator,
    evaluate_coco,
    make_cocoeval,
    predictions_to_coco_results,
    run_cocoeval,
)
from detector.evaluation.inference import inference_on_dataset

__all__ = [
    "AR_KEYS",
    "COCO_KEYS",
    "METRIC_KEYS",
    "COCOEvaluator",
    "evaluate_coco",
    "inference_on_dataset",
    "make_cocoeval",
    "predictions_to_coco_results",
    "run_cocoeval",
]
