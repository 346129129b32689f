from detector.engine.checkpoint import (
    find_last_checkpoint, load_checkpoint, read_weights_file, remove_stale_temporaries, save_checkpoint,
)
from detector.engine.finetune import FinetuneReport, load_finetune_weights
from detector.engine.solver import WarmupSchedule, build_lr_scheduler, build_optimizer, scaled_lr
from detector.engine.step import AMP_DTYPES, NonFiniteError, check_finite, train_step
from detector.engine.trainer import TrainingInterrupted, train_loop

__all__ = [
    "AMP_DTYPES", "FinetuneReport", "NonFiniteError", "TrainingInterrupted", "check_finite", "remove_stale_temporaries", "train_step", "WarmupSchedule", "build_lr_scheduler", "build_optimizer", "find_last_checkpoint",
    "load_checkpoint", "load_finetune_weights", "read_weights_file", "save_checkpoint", "scaled_lr", "train_loop",
]
