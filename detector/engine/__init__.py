from detector.engine.checkpoint import find_last_checkpoint, load_checkpoint, save_checkpoint
from detector.engine.solver import WarmupSchedule, build_lr_scheduler, build_optimizer, scaled_lr
from detector.engine.trainer import train_loop

__all__ = [
    "WarmupSchedule", "build_lr_scheduler", "build_optimizer", "find_last_checkpoint", "scaled_lr",
    "load_checkpoint", "save_checkpoint", "train_loop",
]
