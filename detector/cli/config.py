"""Glue between Hydra configs and the framework: the only place that turns configs into objects.

``detector/`` never sees a config object (STYLE.md rule 3); this module validates the user's values
at the boundary (one clear line per mistake, naming the key), registers the two interpolation
resolvers the YAML files use, and instantiates the model and datasets with ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException, InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detector.cli.stored_config import (
    DATASET_TARGETS,
    MODEL_TARGETS,
    check_stored_config,
    stored_config,
)
from detector.data import DetectionDataset
from detector.engine.checkpoint import checkpoint_class_names
from detector.engine.solver import scaled_lr
from detector.engine.step import AMP_MODES, resolve_amp
from detector.errors import CheckpointError, ConfigError, DatasetError, DetectorError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# The configs every command composes: the top-level configs/ of the checkout, which the package
# reaches through the link detector/configs (and the wheel holds as a copy): one source of truth.
CONFIG_DIR = str(PACKAGE_DIR / "configs")


def project_root() -> Path:
    """Where ``datasets/`` and ``outputs/`` go: the checkout's root when the package runs from one,
    else the current directory (an installed wheel has no checkout)."""
    root = PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() and (root / "configs").is_dir() else Path.cwd()


REPO_ROOT = project_root()


def register_resolvers() -> None:
    """The interpolations the YAML files use; every command calls this before it reads a config."""
    # ${scaled_lr:lr,batch,ref_batch,width,ref_width,exponent[,max_width_factor[,max_batch_factor[,min_width_factor]]]}: the
    # solver's lr from a reference recipe (detector.engine.scaled_lr: capped linear in the batch, a capped
    # power of the width; see configs/solver/sgd.yaml). Configs stored before a cap or the floor existed
    # pass fewer values: no cap, no floor; a cap or floor set to null means the same.
    OmegaConf.register_new_resolver(
        "scaled_lr",
        lambda lr, batch, ref_batch, width, ref_width, exponent, cap=None, batch_cap=None, floor=None: (
            scaled_lr(
                reference_lr=float(lr), ims_per_batch=int(batch), reference_batch=int(ref_batch),
                width=float(width), reference_width=float(ref_width), width_exponent=float(exponent),
                max_width_factor=math.inf if cap is None else float(cap),
                max_batch_factor=math.inf if batch_cap is None else float(batch_cap),
                min_width_factor=0.0 if floor is None else float(floor),
            )
        ),
        replace=True,
    )
    # ${fractions_of:n,[f, ...]}: the iterations at fractions f of n (the step schedule's milestones).
    OmegaConf.register_new_resolver(
        "fractions_of", lambda n, fractions: [int(round(int(n) * float(f))) for f in fractions], replace=True
    )
    # ${repo_root:}: the checkout's root (else the current directory), so the embedded dataset lands
    # in datasets/ whatever the cwd.
    OmegaConf.register_new_resolver("repo_root", lambda: str(project_root()), replace=True)


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
        for cap in ("solver.max_width_factor", "solver.max_batch_factor"):
            if OmegaConf.select(cfg, cap) is not None:
                _check_number(cfg, cap, minimum=0, exclusive=True)
        if OmegaConf.select(cfg, "solver.min_width_factor") is not None:
            _check_number(cfg, "solver.min_width_factor", minimum=0)
        _check_number(cfg, "model.backbone.width", minimum=0, exclusive=True)
    _check_number(cfg, "solver.base_lr", minimum=0, exclusive=True)
    if OmegaConf.select(cfg, "solver.backbone_lr_factor") is not None:
        _check_number(cfg, "solver.backbone_lr_factor", minimum=0, exclusive=True)
    _check_number(cfg, "solver.momentum", minimum=0)
    if _get(cfg, "solver.momentum") >= 1:
        raise ConfigError(f"solver.momentum must be below 1 (0.9 is usual), got {_get(cfg, 'solver.momentum')!r}")
    _check_number(cfg, "solver.weight_decay", minimum=0)
    if OmegaConf.select(cfg, "solver.ema_decay") is not None:
        _check_number(cfg, "solver.ema_decay", minimum=0)
        if _get(cfg, "solver.ema_decay") >= 1:
            raise ConfigError(f"solver.ema_decay must be below 1 (0 turns the average off; 0.99 averages about the "
                              f"last 100 iterations), got {_get(cfg, 'solver.ema_decay')!r}")
    _check_number(cfg, "solver.warmup_iters", integer=True, minimum=0)
    _check_number(cfg, "solver.clip_grad_norm", minimum=0)
    if OmegaConf.select(cfg, "solver.divergence_factor") is not None:
        _check_number(cfg, "solver.divergence_factor", minimum=0)
    if _get(cfg, "solver.schedule") not in ("cosine", "step"):
        raise ConfigError(f"solver.schedule must be cosine or step, got {_get(cfg, 'solver.schedule')!r}")
    amp_mode(cfg)
    _check_number(cfg, "seed", integer=True, minimum=0)
    _check_number(cfg, "checkpoint_period", integer=True, minimum=0)
    _check_number(cfg, "checkpoint_keep_last", integer=True, minimum=0)
    if _get(cfg, "solver.schedule") == "step":
        max_iter = _get(cfg, "solver.max_iter")
        for step in _get(cfg, "solver.steps") or []:
            if isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= max_iter:
                raise ConfigError(f"solver.steps: {step!r} is not an iteration of the run (1..{max_iter}, "
                                  f"solver.max_iter={max_iter}); the lr would never drop there")
    _check_number(cfg, "eval_period", integer=True, minimum=0)
    checked_workers(_get(cfg, "num_workers"))
    if OmegaConf.select(cfg, "image_cache_mb") is not None:
        _check_number(cfg, "image_cache_mb", minimum=0)
    compiled = OmegaConf.select(cfg, "compile")
    if compiled is not None and not isinstance(compiled, bool):
        raise ConfigError(f"compile must be true or false, got {compiled!r}")
    grouping = OmegaConf.select(cfg, "aspect_ratio_grouping")
    if grouping is not None and not isinstance(grouping, bool):
        raise ConfigError(f"aspect_ratio_grouping must be true or false, got {grouping!r}")
    _check_number(cfg, "log_period", integer=True, minimum=1)
    validate_model_config(cfg)
    for split in ("train", "val"):
        node = _get(cfg, f"dataset.{split}")
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"dataset.{split} must be a dataset node with a _target_ (see configs/dataset/)")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, as in a container)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def checked_workers(value: Any, key: str = "num_workers") -> int | str:
    """``auto`` or an integer >= 0 (one line otherwise)."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ConfigError(f"{key} must be auto or an integer >= 0, got {value!r}")


def loader_workers(value: Any, device: torch.device, key: str = "num_workers") -> tuple[int, str]:
    """Data-loading worker processes for ``key=value`` on ``device``, and one line saying why.

    ``auto``: none (load in the main process) when the model runs on a CPU with at most 2 cores,
    else 1. On such a CPU the model's threads already use every core, and a worker process takes
    its core away from them: on a 2-core CPU the default run trained 1.08x faster per iteration
    and evaluated 1.44x faster with loading in the main process (docs/precision.md). Elsewhere
    (more cores, a GPU) one worker, not measured against in-process loading there.
    """
    value = checked_workers(value, key)
    if value != "auto":
        return int(value), f"{key}={value}"
    cores = available_cores()
    if device.type == "cpu" and cores <= 2:
        return 0, f"{key}=auto: 0, loading in the main process (the model's threads use all {cores} CPU cores)"
    return 1, f"{key}=auto: 1 worker process ({device.type}, {cores} CPU cores)"


def checked_amp_mode(value: Any, key: str = "solver.amp") -> str:
    """auto | off | bf16 | fp16 (one line otherwise). An unquoted ``off`` in YAML (or ``=false``) is
    the boolean False: that is off too."""
    value = "off" if value is False else value
    if not isinstance(value, str) or value not in AMP_MODES:
        raise ConfigError(f"{key} must be auto, off, bf16 or fp16, got {value!r}")
    return value


def amp_mode(cfg: DictConfig) -> str:
    """``solver.amp``: auto | off | bf16 | fp16 (one line otherwise); :func:`resolve_amp` picks the dtype."""
    return checked_amp_mode(_get(cfg, "solver.amp"))


def amp_dtype_for(mode: Any, device: torch.device, key: str = "solver.amp") -> torch.dtype | None:
    """The autocast dtype of the setting ``key=mode`` on ``device`` (None = float32), logged in one line."""
    choice = resolve_amp(checked_amp_mode(mode, key), device, key=key)
    logging.getLogger("detector").log(logging.WARNING if choice.warn else logging.INFO, choice.reason)
    return choice.dtype


def amp_dtype(cfg: DictConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``solver.amp`` on ``device`` (None = float32), logged in one line."""
    return amp_dtype_for(amp_mode(cfg), device)


def checkpoint_amp_dtype(amp: Any, stored: Mapping[str, Any], device: torch.device) -> torch.dtype | None:
    """Evaluation's precision: ``amp`` when given, else (null) the one the checkpoint's run trained in.

    ``stored`` is the checkpoint's training config; its ``solver.amp`` is resolved on this device by
    training's rule, so a checkpoint evaluated with the defaults scores what its training's own
    evaluation scored. A checkpoint without the key trained in float32.
    """
    if amp is not None:
        return amp_dtype_for(amp, device, key="amp")
    solver = stored.get("solver") if isinstance(stored, Mapping) else None
    mode = solver.get("amp", "off") if isinstance(solver, Mapping) else "off"
    return amp_dtype_for(mode, device, key="the checkpoint's solver.amp")


def validate_model_config(cfg: DictConfig) -> None:
    _check_number(cfg, "model.backbone.width", minimum=0, exclusive=True)
    _check_number(cfg, "model.pooler.output_size", integer=True, minimum=1)
    if _get(cfg, "model.backbone.stride") not in (16, 32):
        raise ConfigError(f"model.backbone.stride must be 16 or 32, got {_get(cfg, 'model.backbone.stride')!r}")


def build_model(model_cfg: DictConfig | dict, *, class_names: Sequence[str]):
    """Build ``cfg.model`` part by part, filling in what the data and the built parts know.

    One value, one place: the number of classes comes from ``class_names`` (the dataset's), the
    channels of the heads from the built backbone (``out_channels``), the stride of the anchors and
    the pooler's ``spatial_scale`` from the backbone's ``stride``, the RPN head's anchors per cell
    from the built anchor generator, the box head's input size from the pooler's ``output_size``.
    The config names each part's ``_target_`` and its own hyper-parameters only. Without an ``rpn``
    node (or ``rpn: null``) the model is a Fast R-CNN (proposals from outside).
    """
    if isinstance(model_cfg, DictConfig):
        # Resolve inside the full config, so ${model.*} interpolations find their targets.
        c = OmegaConf.to_container(OmegaConf.create({"model": model_cfg}), resolve=True)["model"]
    else:
        c = copy.deepcopy(model_cfg)
    for key in ("defaults", "weights", "sync_bn", "num_classes", "backbone_channels", "proposal_topk_train",
                "proposal_topk_test"):
        c.pop(key, None)
    c["roi_heads"] = {k: v for k, v in c["roi_heads"].items() if k != "pooler"}  # older checkpoints' copy
    num_classes = len(class_names)
    if num_classes < 1:
        raise ConfigError("the dataset has no classes: nothing to build a detector for")

    backbone = instantiate_or_explain(c["backbone"], what="model.backbone")
    stride, channels = int(backbone.stride), int(backbone.out_channels)
    pooler = instantiate_or_explain(c["pooler"], what="model.pooler", spatial_scale=1.0 / stride)
    heads = dict(c["roi_heads"])
    box_head = instantiate_or_explain(
        heads.pop("box_head"), what="model.roi_heads.box_head", in_channels=channels, pooled_size=pooler.output_size
    )
    predictor = instantiate_or_explain(
        heads.pop("predictor"), what="model.roi_heads.predictor", in_features=box_head.out_features,
        num_classes=num_classes,
    )
    roi_heads = instantiate_or_explain(
        heads, what="model.roi_heads", pooler=pooler, box_head=box_head, predictor=predictor
    )
    rpn = None
    if c.get("rpn") is not None:
        rpn_cfg = dict(c["rpn"])
        anchors = instantiate_or_explain(
            rpn_cfg.pop("anchor_generator"), what="model.rpn.anchor_generator", stride=stride
        )
        head = instantiate_or_explain(
            rpn_cfg.pop("head"), what="model.rpn.head", in_channels=channels,
            num_anchors=anchors.num_anchors_per_location,
        )
        rpn = instantiate_or_explain(rpn_cfg, what="model.rpn", head=head, anchor_generator=anchors)
    transform = instantiate_or_explain(c["transform"], what="model.transform")
    return instantiate_or_explain(
        {"_target_": c["_target_"]}, what="model", backbone=backbone, rpn=rpn, roi_heads=roi_heads,
        transform=transform,
    )


def instantiate_or_explain(node: Any, *, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a failure into one line naming the config key.

    An error the library raises about its own arguments (``stride must be 16 or 32``) comes back
    prefixed with the config node it was built from (``model.backbone: stride must be ...``), which
    is what a user types.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DetectorError):
            raise type(cause)(f"{what}: {cause}") from None
        first = str(e).strip().splitlines()[0]
        detail = f" ({cause.__class__.__name__}: {cause})" if cause is not None else ""
        raise ConfigError(f"cannot build {what}: {first}{detail}") from None


def check_split(dataset: DetectionDataset, key: str, reference: DetectionDataset | None = None) -> None:
    """An evaluation split must have images, ground truth, and the reference's classes (one line each)."""
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.source}: the {key} split has no images; every metric would be undefined")
    if not dataset.coco.getAnnIds():
        raise DatasetError(f"{dataset.source}: the {key} split has no ground-truth boxes to score against")
    if reference is not None and dataset.class_names != reference.class_names:
        raise DatasetError(
            f"{dataset.source}: classes {list(dataset.class_names)} differ from {reference.source}'s "
            f"{list(reference.class_names)}"
        )


def build_split(
    node: Any, *, what: str, from_file: Path | None = None, trusted_targets: Sequence[str] = (), **kwargs: Any
) -> DetectionDataset:
    """An evaluation split from a dataset node (``_target_``), checked by :func:`check_split`.

    ``from_file``: the node was read from that file (a checkpoint's stored ``dataset.val``), so it
    is data: it may only name the framework's dataset readers (or ``trusted_targets``), and a
    generated split is read from disk as it is, never drawn or redrawn (a file must not make a tool
    write, let alone over a folder it names).
    """
    if from_file is not None:
        if not isinstance(node, dict):
            raise CheckpointError(f"{from_file}: {what} is not a dataset node; pass dataset=... to name the data")
        check_stored_config(node, source=from_file, key=what, allowed=DATASET_TARGETS, trusted=trusted_targets)
        node = copy.deepcopy(node)
        if node.get("_target_") == "detector.data.generated.generated_split":
            node["create"] = False
    node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    if "_target_" not in node:
        raise ConfigError(f"{what} names no dataset (_target_); see configs/dataset/ or pass dataset=...")
    try:
        dataset = instantiate_or_explain(node, what=what, **kwargs)
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
        if from_file is None:
            raise
        raise CheckpointError(
            f"{from_file}: its stored {what} cannot be built ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"pass dataset=... to name the data"
        ) from None
    check_split(dataset, what)
    return dataset


def model_from_checkpoint(
    path: Path, state: dict, device, *, trusted_targets: Sequence[str] = (), test_scale: float | None = None
) -> tuple[Any, list[str]]:
    """Rebuild a trained model from the config and class names stored in its checkpoint (tested at
    ``test_scale`` x its training size when given; None: its own ``model.transform.test_scale``).

    Needs no dataset: the classes come from the checkpoint (``extra.dataset.class_names``). The
    stored config is data from a file: it is checked by :func:`stored_model_config` before
    anything is built, so it can only name this framework's own parts (plus ``trusted_targets``,
    the user's own parts named on the command line).
    """
    model_cfg = stored_model_config(path, state, trusted_targets=trusted_targets)
    class_names = checkpoint_class_names(state)
    if class_names is None:
        raise CheckpointError(f"{path} stores no class names; it was not written by roilens train")
    try:
        model_cfg["backbone"]["weights"] = None  # the checkpoint brings every weight: load nothing first
        model = build_model(model_cfg, class_names=class_names)
    except DetectorError as e:
        raise CheckpointError(f"{path}: its stored config.{e}") from None
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
        # A stored config of the wrong shape (a part given as a string, a missing node): the file
        # was not written by tools/train.py, or was edited.
        raise CheckpointError(
            f"{path}: its stored config.model cannot be built ({type(e).__name__}: {e}); it was not written "
            f"by tools/train.py, or was edited"
        ) from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit its stored config: {str(e).splitlines()[0]}") from None
    if test_scale is not None:
        model.transform.set_test_scale(test_scale)
    return model.to(device).eval(), class_names


def stored_model_config(path: Path, state: dict, *, trusted_targets: Sequence[str] = ()) -> dict:
    """The checkpoint's stored ``model`` config, checked to name only the framework's parts.

    Refused with one line (the key and the value) before anything is built: see detector/cli/stored_config.py.
    """
    stored = stored_config(state, source=path)
    check_stored_config(stored["model"], source=path, key="config.model", allowed=MODEL_TARGETS,
                        trusted=trusted_targets)
    return copy.deepcopy(stored["model"])


def run_directory(cfg: DictConfig) -> Path:
    """Hydra's run or job directory; the config's ``output_dir`` when called in-process without Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.output_dir)


FINISHED_RUN_FILES = ("model_final.pth", "metrics.json", "last_checkpoint")


def check_output_dir_free(output_dir: Path, *, resume: Any, overwrite: bool) -> None:
    """Refuse, before anything is written, a new run into a folder that holds another run.

    A folder with a final model, metrics or a checkpoint pointer is a run someone may want to keep:
    ``resume=true`` (or ``auto``) continues it, another ``output_dir`` starts a new one, and
    ``overwrite=true`` says that replacing it is intended.
    """
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite must be true or false, got {overwrite!r}")
    if resume in (True, "auto") or overwrite:
        return
    held = [name for name in FINISHED_RUN_FILES if (Path(output_dir) / name).exists()]
    if held:
        raise ConfigError(
            f"{output_dir} already holds a run ({held[0]}); resume=true continues it, output_dir=... starts a "
            f"new one elsewhere, overwrite=true replaces it"
        )


def check_output_dir_writable(output_dir: Path) -> None:
    """Create ``output_dir`` and write a scratch file there, or say in one line why that fails."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as e:
        raise ConfigError(
            f"output_dir={output_dir}: cannot write there ({e.strerror or type(e).__name__}); choose a folder you "
            f"can write to"
        ) from None


class OutputDirCallback(Callback):
    """Hydra callback: check the run folder before Hydra writes into it (``.hydra/``, the log file).

    Hydra creates the folder and writes ``.hydra/*.yaml`` before the task function starts, so a
    refusal made inside the task comes too late: a read-only folder would surface as Hydra's own
    traceback, and a finished run's record would already be rewritten. ``on_run_start`` runs
    before that (single runs; a sweep's jobs are checked by the task). ``refuse_finished_run``:
    :func:`check_output_dir_free` too (tools/train.py).
    """

    def __init__(self, refuse_finished_run: bool = False) -> None:
        self.refuse_finished_run = refuse_finished_run

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            output_dir = Path(str(config.hydra.run.dir))
            if self.refuse_finished_run:
                check_output_dir_free(output_dir, resume=config.get("resume"), overwrite=config.get("overwrite"))
            check_output_dir_writable(output_dir)
        except DetectorError as e:
            print(f"error: {user_message(e)}", file=sys.stderr)
            sys.exit(1)


def console_logging_for(progress: bool) -> None:
    """With a progress bar on screen, keep INFO lines in the run's log file only (not the console)."""
    if not progress:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def report(text: str) -> None:
    """Print ``text`` (a tool's result: a metrics line, a table) and keep it in the run's log file.

    The log file is Hydra's job log, ``<output_dir>/<tool>.log`` (``train.log``, ``eval.log``): the
    text goes to every file handler of the root logger, so the console shows it once, as printed,
    whatever its level. Called in-process without Hydra there is no log file and it is only printed.
    """
    print(text)
    to_log_files(text)


def to_log_files(text: str, level: int = logging.INFO) -> None:
    """Write ``text`` to the run's log file(s) only (the console has it already)."""
    root = logging.getLogger()
    message = "\n" + text if "\n" in text else text  # a table starts on its own line, columns aligned
    record = root.makeRecord("report", level, __file__, 0, message, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def warnings_to_log() -> Iterator[None]:
    """Python warnings of the library (dropped boxes, clipped proposals) as log lines while a tool runs.

    The library warns with ``warnings.warn`` (what a Python user of the package expects); a tool's
    user reads the console and the run's log file, so each warning becomes one WARNING record of
    the ``detector`` logger there, without the source line of whatever frame raised it.
    """
    log = logging.getLogger("detector")
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        log.warning("%s", message)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def user_message(err: DetectorError) -> str:
    """The one line of a user-input error, also when a DataLoader worker raised it.

    A worker's exception comes back re-raised with the worker's whole traceback as its message
    ("Caught DatasetError in DataLoader worker process 0. Original Traceback ..."); its last line is
    the original one-line message, prefixed with the exception's qualified name.
    """
    text = str(err).strip()
    if "Original Traceback" not in text:
        return text.splitlines()[0] if text else type(err).__name__
    last = text.splitlines()[-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def reject_added_keys() -> None:
    """``+solver.max_itr=5`` (Hydra's own hint for a typo) adds a key nothing reads: refuse it.

    Every key a tool reads is defined in ``configs/``; a ``+key=value`` override can only add one
    that nobody reads, so the run would silently ignore it. (``++key`` forces a value and is left
    to the user.)
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    for override in HydraConfig.get().overrides.task:
        if override.startswith("+") and not override.startswith("++"):
            key = override[1:].split("=", 1)[0]
            raise ConfigError(
                f"{override}: no config defines {key!r}, so nothing would read it; check the spelling "
                f"(the keys are in configs/, e.g. python tools/train.py --cfg job)"
            )


def check_argv(argv: Sequence[str]) -> None:
    """An unquoted value with a space (``output_dir=my runs/a``) reaches Hydra as two arguments, and
    Hydra's override lexer then reports a parse error without saying why; say it, with the fix."""
    for previous, arg in zip(argv, argv[1:]):
        if "=" in previous and not previous.startswith("-") and "=" not in arg and not arg.startswith("-"):
            key, value = previous.split("=", 1)
            print(f"error: {arg!r} is not a key=value override: if it belongs to {key}, quote the value, e.g. "
                  f"{key}='{value} {arg}'", file=sys.stderr)
            sys.exit(1)


def run_cli(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task so a user-input error prints one line and exits 1, with no traceback."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            register_resolvers()
            reject_added_keys()
            with warnings_to_log():
                return fn(cfg)
        except DetectorError as e:
            _fail(f"error: {user_message(e)}", getattr(e, "exit_code", 1))
        except (OmegaConfBaseException, HydraException) as e:
            _fail(f"error: config: {str(e).strip().splitlines()[0]}", 1)

    return wrapper


def _fail(line: str, code: int) -> None:
    """The one line on stderr and in the run's log file (so a log shows why a run stopped); exit."""
    print(line, file=sys.stderr)
    to_log_files(line, logging.ERROR)
    sys.exit(code)
