"""Checkpoints: one schema, written here and nowhere else, atomically.

    {"format": CHECKPOINT_FORMAT,
     "model", "optimizer", "scheduler", "grad_scaler", "iteration"   # TrainState.state_dict()
     ("ema": {"training_model", "updates"} with solver.ema_decay: "model" is then the average)
     "config": the run's resolved config (plain dict),
     "extra": {"dataset": {"class_names", "label_to_cat_id", "train_source"}, "rng_per_rank": [...], ...}}

A checkpoint is self-describing: ``roilens eval`` rebuilds the model (pooler included) from the
``config`` stored inside it, so comparing RoIPool with RoIAlign needs only the checkpoint files. It is
read with ``torch.load(weights_only=True)``: tensors and plain types, never code.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from detector.engine.state import TrainState
from detector.errors import CheckpointError, ConfigError
from detector.utils.io import atomic_torch_save, atomic_write_text

logger = logging.getLogger(__name__)

# The schema's version, written into every checkpoint; a reader can tell what it holds.
CHECKPOINT_FORMAT = 1


def save_checkpoint(
    path: str | Path,
    state: TrainState,
    *,
    config: dict | None = None,
    extra: dict | None = None,
    keep_last: int = 0,
) -> Path:
    """Write a checkpoint atomically, point ``last_checkpoint`` at it, then prune old ones.

    ``keep_last > 0`` keeps that many periodic checkpoints (:func:`prune_checkpoints`), deleting the
    older ones only once the new one and the marker are complete. ``grad_scaler`` (a float16 run's)
    stores its scale and growth counter, plain floats and ints that ``weights_only`` loading accepts.
    """
    path = Path(path)
    record = {"format": CHECKPOINT_FORMAT, **state.state_dict(), "config": config, "extra": extra or {}}
    atomic_torch_save(record, path)
    atomic_write_text(path.parent / "last_checkpoint", path.name + "\n")
    prune_checkpoints(path.parent, keep_last)
    return path


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain types only, so a file cannot run code."""
    with open(path, "rb") as f:
        head = f.read(2)
    if not (head == b"PK" or head[:1] == b"\x80"):  # torch.save's zip archive, or a legacy pickle
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle); pass a .pth file "
            f"written by tools/train.py or torch.save"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's weights-only unpickler refused something
        text = str(e)
        at = text.find("Unsupported")
        detail = text[at:].splitlines()[0].split(" was not ")[0] if at >= 0 else "refused"
        if "GLOBAL" in detail:  # a pickled Python object: it could run code
            raise CheckpointError(
                f"{path}: refused: it holds Python objects other than tensors and plain types, which could "
                f"run code when loaded ({detail[:160]}); re-save it as a plain state dict from a trusted source"
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a torch file of tensors and plain types "
            f"(torch.load(weights_only=True): {detail[:160]}); files that hold pickled objects are refused"
        ) from None
    except Exception as e:  # torch raises many types for a truncated or damaged file
        raise CheckpointError(f"cannot read checkpoint {path}: {e.__class__.__name__}: {e}") from None


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; one clear error if it is not one.

    Read with ``torch.load(weights_only=True)``: everything a checkpoint holds (weights, optimizer
    and scheduler state, the config as a plain dict, class names) is tensors and plain types, and a
    file that holds anything else is refused rather than unpickled. A ``format`` newer than
    ``CHECKPOINT_FORMAT`` (a later schema) is refused with one line rather than misread.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = _torch_load(path)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a detector checkpoint (no 'model' entry)")
    written = state.get("format", CHECKPOINT_FORMAT)  # files of the first versions carry no number: format 1
    if not isinstance(written, int) or isinstance(written, bool) or not 1 <= written <= CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {written!r}; this version of detector reads formats 1 to {CHECKPOINT_FORMAT}: "
            f"a newer detector wrote it, upgrade to read it"
        )
    return state


def checkpoint_class_names(state: Any) -> list[str] | None:
    """The class names a checkpoint stores (``extra.dataset.class_names``), or None when it holds none."""
    extra = state.get("extra") if isinstance(state, dict) else None
    dataset = extra.get("dataset") if isinstance(extra, dict) else None
    names = dataset.get("class_names") if isinstance(dataset, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return None
    return list(names)


def resume_or_load(output_dir: str | Path, *, resume: Any) -> tuple[Path | None, dict | None]:
    """The checkpoint a run continues from: ``(path, state)``, or ``(None, None)`` for a new run.

    ``resume``: False (start; the caller refuses a finished run's folder), True (continue; an error
    when there is nothing to continue) or ``"auto"`` (continue if there is a checkpoint, else start).
    """
    if resume not in (True, False, "auto"):
        raise ConfigError(f"resume must be true, false or auto, got {resume!r}")
    last = find_last_checkpoint(output_dir, fallback=True) if resume else None
    if resume is True and last is None:
        raise ConfigError(
            f"resume=true but {output_dir} has no checkpoint to continue; resume=auto starts the run when there is none"
        )
    return (last, load_checkpoint(last)) if last is not None else (None, None)


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Weights to fine-tune from: a checkpoint of this framework, or a plain state dict.

    Accepts this framework's checkpoints (``"model"`` plus the class names it stores), a state dict
    (name -> tensor), or one nested under ``"state_dict"`` / ``"model_state_dict"`` / ``"model"``
    (Lightning, common training scripts). A ``module.`` prefix (DistributedDataParallel) is removed.

    Returns:
        ``(state_dict, class_names)``; ``class_names`` is None when the file does not say.

    Raises:
        CheckpointError: Missing file, a file that is not tensors and plain types, or no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    state = _torch_load(path)
    classes = checkpoint_class_names(state)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: holds no state dict (no tensors by name); is it a model checkpoint?")
    weights = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return weights, classes


def _iteration(path: Path) -> int:
    """``model_0000500.pth`` -> 500; ``model_final.pth`` sorts last."""
    stem = path.stem.removeprefix("model_")
    return int(stem) if stem.isdigit() else 1 << 62


def find_last_checkpoint(output_dir: str | Path, *, fallback: bool = False) -> Path | None:
    """The checkpoint named in ``output_dir/last_checkpoint``, if any.

    With ``fallback``, a marker that names a missing file (deleted, or a copy of the folder without
    it) is not taken as "no checkpoint" -- which would restart from iteration 0 and overwrite the run
    -- but falls back to the newest ``model_*.pth`` there that loads; if none does, one line says so.

    Raises:
        CheckpointError: ``fallback`` and the marker names a missing file and no other checkpoint
            of the folder is complete.
    """
    output_dir = Path(output_dir)
    marker = output_dir / "last_checkpoint"
    if not marker.is_file():
        return None
    path = output_dir / marker.read_text().strip()
    if path.is_file() or not fallback:
        return path if path.is_file() else None
    for candidate in sorted(output_dir.glob("model_*.pth"), key=_iteration, reverse=True):
        try:
            load_checkpoint(candidate)
        except CheckpointError:
            continue
        logger.warning("%s names %s, which is missing: resuming from %s, the newest complete checkpoint",
                       marker, path.name, candidate.name)
        return candidate
    raise CheckpointError(
        f"{marker} names {path.name}, which is missing, and no other checkpoint in {output_dir} is complete; "
        f"delete {marker} to start the run over, or use another output_dir"
    )


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest ``model_<iteration>.pth`` (never ``model_final.pth``).

    Called after the new checkpoint and its ``last_checkpoint`` marker are complete, so the marker
    never names a deleted file. ``keep_last=0`` keeps everything.
    """
    if keep_last <= 0:
        return []
    periodic = sorted((p for p in Path(output_dir).glob("model_*.pth") if p.stem.removeprefix("model_").isdigit()),
                      key=_iteration)
    removed = periodic[:-keep_last]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Remove ``.model_*.pth.*.tmp`` files: checkpoint writes a killed process never finished."""
    stale = sorted(Path(output_dir).glob(".model_*.pth.*.tmp")) if Path(output_dir).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
