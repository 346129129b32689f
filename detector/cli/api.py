"""The Python API: what the command line does, from Python, with the same overrides.

    import detector
    model = detector.load("outputs/run/model_final.pth", device="auto")
    model.predict(["a.jpg", "b.png"], score_thresh=0.5)                 # boxes in the images' pixels
    metrics = detector.train("solver.max_iter=200", "output_dir=outputs/run")
    rows = detector.evaluate("checkpoints=[outputs/run/model_final.pth]", "output_dir=outputs/eval")

``load`` rebuilds the model from the checkpoint's stored config under the same rule as every tool (a
file names only the framework's own parts; see ``stored_config.py``). ``train`` and ``evaluate``
compose the command's config with the given overrides and run the command's own function; the run
folder receives what the command writes, its log file included.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from detector.cli.config import (
    CONFIG_DIR,
    check_output_dir_free,
    check_output_dir_writable,
    model_from_checkpoint,
    register_resolvers,
)
from detector.engine import load_checkpoint
from detector.predictor import Predictor
from detector.utils.env import resolve_device

__all__ = ["compose_command", "evaluate", "load", "train"]


def load(checkpoint: str | Path, *, device: str = "auto", trusted_targets: Sequence[str] = (),
         test_scale: float | None = None) -> Predictor:
    """A :class:`~detector.predictor.Predictor` for a checkpoint written by ``roilens train``.

    Args:
        checkpoint: the ``.pth`` file.
        device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
        trusted_targets: classes of your own (e.g. a custom backbone) the checkpoint may name; by
            default it may name only this framework's parts.
        test_scale: predict at this factor of the training size instead of the checkpoint's own
            ``model.transform.test_scale`` (as ``roilens eval/infer test_scale=...``).
    """
    path = Path(checkpoint)
    torch_device = resolve_device(device)
    model, class_names = model_from_checkpoint(
        path, load_checkpoint(path), torch_device, trusted_targets=[str(t) for t in trusted_targets],
        test_scale=test_scale,
    )
    return Predictor(model=model, class_names=class_names, device=torch_device)


def compose_command(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``roilens <name> OVERRIDES`` runs with (``name``: train, eval, infer, ...)."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """The command's log file (Hydra writes it for the command line; here it is ours to write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    # The file holds the run's INFO lines (iterations, metrics) as the command line's does, whatever level
    # the caller's logging is at; the caller's own handlers keep their levels.
    ours = logging.getLogger("detector")
    level = ours.level
    if level == logging.NOTSET or level > logging.INFO:
        ours.setLevel(logging.INFO)
    try:
        yield
    finally:
        ours.setLevel(level)
        root.removeHandler(handler)
        handler.close()


def train(*overrides: str) -> dict[str, float]:
    """``roilens train OVERRIDES`` in this process; returns the final validation metrics."""
    from detector.cli import train as command

    cfg = compose_command("train", overrides)
    output_dir = Path(str(cfg.output_dir))
    # Before the log file is opened in it: a finished run's folder is refused untouched.
    check_output_dir_free(output_dir, resume=cfg.resume, overwrite=cfg.get("overwrite", False))
    check_output_dir_writable(output_dir)
    with _log_file(output_dir / "train.log"):
        if cfg.training == "alternating":
            from detector.cli.alternating import train_alternating

            return train_alternating(cfg, output_dir)
        return command.train(cfg, output_dir=output_dir)


def evaluate(*overrides: str) -> list[dict[str, Any]]:
    """``roilens eval OVERRIDES`` in this process; returns one row of metrics per checkpoint or results file."""
    from detector.cli import eval as command

    cfg = compose_command("eval", overrides)
    with _log_file(Path(str(cfg.output_dir)) / "eval.log"):
        return command.evaluate(cfg)
