from detector.engine.checkpoint import (
    CHECKPOINT_FORMAT, checkpoint_class_names, find_last_checkpoint, load_checkpoint, read_weights_file,
    remove_stale_temporaries, resume_or_load, save_checkpoint,
)
from detector.engine.ema import build_weight_average
from detector.engine.finetune import FinetuneReport, load_finetune_weights
from detector.engine.hooks import (
    AverageWeights, DivergedError, DivergenceGuard, Hook, LoopInfo, MetricLogger, PeriodicCheckpointer, PeriodicEvaluator,
)
from detector.engine.solver import WarmupSchedule, build_lr_scheduler, build_optimizer, scaled_lr
from detector.engine.state import TrainState
from detector.engine.step import AMP_DTYPES, NonFiniteError, check_finite, train_step
from detector.engine.trainer import StepOptions, TrainingInterrupted, train_loop

__all__ = [
    "AMP_DTYPES", "AverageWeights", "CHECKPOINT_FORMAT", "DivergedError", "DivergenceGuard", "FinetuneReport", "Hook", "LoopInfo",
    "MetricLogger", "NonFiniteError", "PeriodicCheckpointer", "PeriodicEvaluator", "StepOptions", "TrainState",
    "TrainingInterrupted", "WarmupSchedule", "build_lr_scheduler", "build_optimizer", "build_weight_average", "check_finite",
    "checkpoint_class_names", "find_last_checkpoint", "load_checkpoint", "load_finetune_weights", "read_weights_file",
    "remove_stale_temporaries", "resume_or_load", "save_checkpoint", "scaled_lr", "train_loop", "train_step",
]
