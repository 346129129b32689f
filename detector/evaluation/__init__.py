"""Evaluation: COCO box AP through pycocotools, and the inference loop that feeds it.

Shape shorthand:
    N: number of images
    D: number of detections in one image
    K: number of foreground classes (labels 1..K)
"""

from detector.evaluation.coco_evaluator import (
    METRIC_KEYS,
    COCOEvaluator,
    evaluate_coco,
    predictions_to_coco_results,
    run_cocoeval,
)
from detector.evaluation.inference import inference_on_dataset

__all__ = [
    "METRIC_KEYS",
    "COCOEvaluator",
    "evaluate_coco",
    "inference_on_dataset",
    "predictions_to_coco_results",
    "run_cocoeval",
]
