"""Glue between Hydra configs and the framework: the only place that turns configs into objects.

``detector/`` never sees a config object (STYLE.md rule 3); this module validates the user's values
at the boundary (one clear line per mistake, naming the key), registers the two interpolation
resolvers the YAML files use, and instantiates the model and datasets with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import HydraException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detector.engine.solver import scaled_lr
from detector.errors import ConfigError, DetectorError

REPO_ROOT = Path(__file__).resolve().parents[1]

# ${vgg_channels:w}: conv5_3 channels of a VGG16 with width multiplier w (512 * w, as the backbone).
OmegaConf.register_new_resolver("vgg_channels", lambda w: max(1, int(round(512 * float(w)))), replace=True)
# ${reciprocal:s}: 1 / s, the pooler's spatial_scale from the backbone stride (so they cannot disagree).
OmegaConf.register_new_resolver("reciprocal", lambda s: 1.0 / float(s), replace=True)
# ${scaled_lr:lr,batch,ref_batch,width,ref_width,exponent}: the solver's lr from a reference recipe
# (detector.engine.scaled_lr: linear in the batch, a power of the width; see configs/solver/sgd.yaml).
OmegaConf.register_new_resolver(
    "scaled_lr",
    lambda lr, batch, ref_batch, width, ref_width, exponent: scaled_lr(
        reference_lr=float(lr), ims_per_batch=int(batch), reference_batch=int(ref_batch),
        width=float(width), reference_width=float(ref_width), width_exponent=float(exponent),
    ),
    replace=True,
)
# ${fractions_of:n,[f, ...]}: the iterations at fractions f of n (the step schedule's milestones).
OmegaConf.register_new_resolver(
    "fractions_of", lambda n, fractions: [int(round(int(n) * float(f))) for f in fractions], replace=True
)
# ${repo_root:}: the checkout's root, so the embedded dataset lands in datasets/ whatever the cwd.
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None


def _check_number(cfg, key, *, integer=False, minimum=None, exclusive=False) -> None:
    value = _get(cfg, key)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key} must be {kind}, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise ConfigError(f"{key} must be {'>' if exclusive else '>='} {minimum}, got {value!r}")


def validate_train_config(cfg: DictConfig) -> None:
    """Check the values a user is most likely to type on the command line."""
    _check_number(cfg, "solver.max_iter", integer=True, minimum=1)
    _check_number(cfg, "solver.ims_per_batch", integer=True, minimum=1)
    if OmegaConf.select(cfg, "solver.reference_lr") is not None:  # the lr rule's inputs, before base_lr
        _check_number(cfg, "solver.reference_lr", minimum=0, exclusive=True)
        _check_number(cfg, "solver.reference_batch", integer=True, minimum=1)
        _check_number(cfg, "solver.reference_width", minimum=0, exclusive=True)
        _check_number(cfg, "solver.width_exponent")
        _check_number(cfg, "model.backbone.width", minimum=0, exclusive=True)
    _check_number(cfg, "solver.base_lr", minimum=0, exclusive=True)
    _check_number(cfg, "solver.momentum", minimum=0)
    _check_number(cfg, "solver.weight_decay", minimum=0)
    _check_number(cfg, "solver.warmup_iters", integer=True, minimum=0)
    _check_number(cfg, "solver.clip_grad_norm", minimum=0)
    if _get(cfg, "solver.schedule") not in ("cosine", "step"):
        raise ConfigError(f"solver.schedule must be cosine or step, got {_get(cfg, 'solver.schedule')!r}")
    _check_number(cfg, "seed", integer=True, minimum=0)
    _check_number(cfg, "checkpoint_period", integer=True, minimum=0)
    _check_number(cfg, "eval_period", integer=True, minimum=0)
    _check_number(cfg, "num_workers", integer=True, minimum=0)
    _check_number(cfg, "log_period", integer=True, minimum=1)
    validate_model_config(cfg)
    for split in ("train", "val"):
        for field in ("images", "annotations"):
            value = _get(cfg, f"dataset.{split}.{field}")
            if not isinstance(value, str) or not value:
                raise ConfigError(f"dataset.{split}.{field} must be a path, got {value!r}")


def validate_model_config(cfg: DictConfig) -> None:
    _check_number(cfg, "model.backbone.width", minimum=0, exclusive=True)
    _check_number(cfg, "model.pooler.output_size", integer=True, minimum=1)
    _check_number(cfg, "model.pooler.spatial_scale", minimum=0, exclusive=True)
    if _get(cfg, "model.backbone.stride") not in (16, 32):
        raise ConfigError(f"model.backbone.stride must be 16 or 32, got {_get(cfg, 'model.backbone.stride')!r}")


def build_model(model_cfg: DictConfig, *, num_classes: int):
    """Instantiate ``cfg.model`` with ``num_classes`` filled in (the dataset decides K)."""
    model_cfg = model_cfg.copy()
    OmegaConf.set_struct(model_cfg, False)
    model_cfg.num_classes = int(num_classes)
    # The model node is instantiated from a config detached from its root: resolve first, so the
    # ${model.*} interpolations are read from the full config, then drop the helper keys.
    cfg = OmegaConf.create({"model": model_cfg})
    container = OmegaConf.to_container(cfg, resolve=True)["model"]
    for key in ("num_classes", "backbone_channels", "pooler", "defaults"):
        container.pop(key, None)
    return instantiate_or_explain(container, what="model")


def instantiate_or_explain(node: Any, *, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a failure into one line naming what failed."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DetectorError):
            raise cause from None
        first = str(e).strip().splitlines()[0]
        detail = f" ({cause.__class__.__name__}: {cause})" if cause is not None else ""
        raise ConfigError(f"cannot build {what}: {first}{detail}") from None


def console_logging_for(progress: bool) -> None:
    """With a progress bar on screen, keep INFO lines in the run's log file only (not the console)."""
    if not progress:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def run_cli(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task so a user-input error prints one line and exits 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return fn(cfg)
        except DetectorError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except (OmegaConfBaseException, HydraException) as e:
            print(f"error: config: {str(e).strip().splitlines()[0]}", file=sys.stderr)
            sys.exit(1)

    return wrapper
