"""Train a Faster R-CNN (or Fast R-CNN) detector.

    python tools/train.py                                   # embedded synthetic dataset, CPU-sized
    python tools/train.py model/pooler=roi_pool solver.max_iter=3000 output_dir=outputs/pool
    python tools/train.py -m model/pooler=roi_pool,roi_align output_dir=outputs/sweep

Everything a run writes goes under its output directory: the resolved ``config.yaml``, checkpoints
(``model_final.pth``), ``tensorboard/`` scalars, ``train.log``, ``coco_results.json`` and
``metrics.json`` of the final evaluation on ``dataset.val``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from detector.cli.config import (
    CONFIG_DIR,
    amp_dtype,
    amp_mode,
    build_model,
    check_output_dir_free,
    check_output_dir_writable,
    check_split,
    console_logging_for,
    instantiate_or_explain,
    loader_workers,
    report,
    run_cli,
    run_directory,
    validate_train_config,
)
from detector.cli.help import run_command
from detector.data import (
    DetectionDataset,
    build_detection_loader,
    build_training_loader,
)
from detector.engine import (
    AverageWeights,
    DivergenceGuard,
    MetricLogger,
    NonFiniteError,
    PeriodicCheckpointer,
    PeriodicEvaluator,
    StepOptions,
    TrainState,
    build_lr_scheduler,
    build_optimizer,
    build_weight_average,
    check_finite,
    find_last_checkpoint,
    load_finetune_weights,
    read_weights_file,
    remove_stale_temporaries,
    resume_or_load,
    save_checkpoint,
    train_loop,
)
from detector.engine.distributed import (
    all_gather_objects,
    barrier,
    broadcast_buffers,
    init_distributed,
    mean_over_ranks,
    replicas_agree,
    shutdown_distributed,
)
from detector.engine.compile import compile_parts
from detector.engine.step import resolve_amp
from detector.errors import CheckpointError, ConfigError, DatasetError, DetectorError
from detector.evaluation import METRIC_KEYS, COCOEvaluator, inference_on_dataset
from detector.evaluation.visualize import draw_detections
from detector.utils.env import resolve_device, rng_state, seed_all, set_rng_state
from detector.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def build_datasets(cfg: DictConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """The train split (with ``cfg.augmentation``) and the val split (no augmentation), from config.

    Each split node names its dataset class or factory with ``_target_`` (``configs/dataset/``): COCO
    JSON, VOC, YOLO or a generated set all build the same way. The classes come from the data.
    """
    augmentation = instantiate_or_explain(cfg.augmentation, what="augmentation")
    train_extra, val_extra = proposal_options(cfg)
    train_set = instantiate_or_explain(
        cfg.dataset.train, what="dataset.train", transforms=augmentation, skip_empty=True, **train_extra
    )
    val_set = instantiate_or_explain(cfg.dataset.val, what="dataset.val", **val_extra)
    check_split(val_set, "dataset.val", train_set)
    if len(train_set) == 0:
        raise DatasetError(f"{train_set.source}: no image with a usable box to train on (dataset.train)")
    return train_set, val_set


def proposal_options(cfg: DictConfig) -> tuple[dict, dict]:
    """Fast R-CNN (a model without an RPN) reads each split's proposal file, top-k from the model config."""
    if cfg.model.get("rpn", None) is not None:
        for split in ("train", "val"):
            if cfg.dataset[split].get("proposals"):
                raise ConfigError(f"dataset.{split}.proposals is set but the model has an RPN; use model=fast_rcnn_vgg16")
        return {}, {}
    options = []
    for split, topk in (("train", "proposal_topk_train"), ("val", "proposal_topk_test")):
        if not cfg.dataset[split].get("proposals"):
            raise ConfigError(
                f"model=fast_rcnn_vgg16 needs dataset.{split}.proposals=FILE (proposals per image; "
                f"tools/dump_proposals.py writes one from a Faster R-CNN checkpoint)"
            )
        options.append({"proposals": cfg.dataset[split].proposals, "proposal_topk": cfg.model.get(topk)})
    return options[0], options[1]


def finetune_from(model, path: str, class_names) -> None:
    """``model.weights=PATH``: load what fits, map the predictor's rows by class name, log one block."""
    try:
        state_dict, checkpoint_classes = read_weights_file(path)
        report = load_finetune_weights(
            model, state_dict, source=path, checkpoint_classes=checkpoint_classes, model_classes=list(class_names)
        )
    except CheckpointError as e:
        raise CheckpointError(f"model.weights: {e}") from None
    # One block, on the console and in the run's log (the progress bar hides INFO lines).
    logging.getLogger(__name__).warning("fine-tuning from %s:\n  %s", path, "\n  ".join(report.lines()))


def check_resumable(state: dict, resolved: dict, path: Path) -> None:
    """Resuming continues the same model on the same data: refuse anything else in one line."""
    stored = state.get("config") or {}
    if stored.get("model") != resolved["model"]:
        raise ConfigError(
            f"resume=true but the model config differs from the one stored in {path}; use a new "
            f"output_dir to train a different model"
        )
    if int(state["iteration"]) > int(resolved["solver"]["max_iter"]):
        raise ConfigError(
            f"resume=true but {path} is already at iteration {state['iteration']} > "
            f"solver.max_iter={resolved['solver']['max_iter']}"
        )


@torch.no_grad()
def log_val_images(model, val_set, writer, step: int, device, count: int = 4) -> None:
    """A few val images with ground truth (green) and detections (red) in TensorBoard."""
    was_training = model.training
    model.eval()
    for i in range(min(count, len(val_set))):
        image, target = val_set[i]
        proposals = [target["proposals"].to(device)] if "proposals" in target else None  # Fast R-CNN
        detection = model([image.to(device)], proposals=proposals)[0]
        writer.add_image(f"val/detections_{i}", draw_detections(image, target, detection, val_set.class_names), step)
    model.train(was_training)


def train(cfg: DictConfig, output_dir: Path | None = None) -> dict[str, float]:
    """Train with a composed config; returns the final metrics.

    ``output_dir`` overrides the run directory (the alternating schedule runs one train per step).
    """
    # 1. Validate the config and the run folder before anything is written.
    validate_train_config(cfg)
    console_logging_for(bool(cfg.progress))
    output_dir = Path(output_dir) if output_dir is not None else run_directory(cfg)
    check_output_dir_free(output_dir, resume=cfg.resume, overwrite=cfg.get("overwrite", False))
    check_output_dir_writable(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ddp, device = init_distributed(resolve_device(cfg.device))
    if not ddp.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one log: rank 0's
    seed_all(int(cfg.seed))

    # 2. The data (rank 0 draws a generated dataset first; the others then read it).
    if ddp.enabled and not ddp.is_main:
        barrier()
    train_set, val_set = build_datasets(cfg)
    if ddp.enabled and ddp.is_main:
        barrier()
    started = time.perf_counter()  # after the (one-time) dataset generation
    check_batch(cfg, ddp.world_size, train_set)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    # 3. Resume or start: the checkpoint to continue (if any), then the model, optimizer and schedule.
    removed = remove_stale_temporaries(output_dir)
    if removed:
        log.warning("removed %d unfinished checkpoint write(s) left by a killed run: %s", len(removed), removed[0])
    last, checkpoint = resume_or_load(output_dir, resume=cfg.resume)
    if checkpoint is not None:
        check_resumable(checkpoint, resolved, last)
    state, amp = build_state(cfg, ddp, device, train_set, checkpoint)
    if checkpoint is not None:
        log.warning("resumed from %s at iteration %d", last, state.iteration)  # console and train.log
    if ddp.is_main:
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)))

    # 4. The training stream: a function of (seed, sample position), so a resumed run sees exactly
    # the uninterrupted run's batches; rank r of N takes every N-th sample (detector/data/sampler.py).
    workers, why = loader_workers(cfg.num_workers, device)
    log.info(why)
    cache_mb = float(cfg.get("image_cache_mb") or 0)
    if workers == 0 and cache_mb > 0 and hasattr(train_set, "cache_images"):
        # Loading in the main process: decoded images stay in memory for the later epochs.
        train_set.cache_images(int(cache_mb * 2**20))
        log.info("image_cache_mb=%g: decoded training images are kept in memory, up to that much", cache_mb)
    grouping = bool(cfg.get("aspect_ratio_grouping", False))
    if checkpoint is not None:  # the run's batches are the run's: keep the stored setting
        stored = bool((checkpoint.get("config") or {}).get("aspect_ratio_grouping", False))
        if stored != grouping:
            log.warning("aspect_ratio_grouping=%s ignored: the resumed run was trained with %s", grouping, stored)
        grouping = stored
    loader = build_training_loader(
        train_set, batch_size=int(cfg.solver.ims_per_batch) // ddp.world_size, seed=int(cfg.seed),
        start=state.iteration * int(cfg.solver.ims_per_batch), num_workers=workers, rank=ddp.rank,
        world_size=ddp.world_size, aspect_ratio_grouping=grouping,
    )
    if grouping:
        groups = getattr(loader.dataset, "groups", None)
        log.info(
            "aspect-ratio grouping: off (the dataset does not report its image sizes)" if groups is None else
            f"aspect-ratio grouping: batches of landscape ({int((groups == 0).sum())} images) or portrait "
            f"({int((groups == 1).sum())}) images"
        )
    train_model = state.model
    if ddp.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            state.model, device_ids=[device] if device.type == "cuda" else None
        )

    # 5. The hooks, then the loop.
    writer = SummaryWriter(log_dir=str(output_dir / "tensorboard")) if ddp.is_main else None
    save = RunCheckpoints(cfg, ddp, state, output_dir, resolved=resolved, train_set=train_set)
    evaluate = RunEvaluation(cfg, ddp, state.eval_model, val_set, output_dir, device=device, writer=writer, amp_dtype=amp)
    hooks = [
        DivergenceGuard(factor=float(cfg.solver.get("divergence_factor", 0.0)),
                        until=max(200, 2 * int(cfg.solver.warmup_iters))),
        MetricLogger(period=int(cfg.log_period), writer=writer, progress=bool(cfg.progress) and ddp.is_main),
        # Before the checkpointer and the evaluator: they save and score the average.
        *([AverageWeights(scaler=state.scaler)] if state.average is not None else []),
        PeriodicCheckpointer(period=int(cfg.checkpoint_period), save=save),
        PeriodicEvaluator(period=int(cfg.eval_period), evaluate=evaluate, writer=writer),
    ]
    options = StepOptions(
        clip_grad_norm=float(cfg.solver.clip_grad_norm), nonfinite=str(cfg.solver.nonfinite),
        max_nonfinite_skips=int(cfg.solver.max_nonfinite_skips), amp_dtype=amp,
        reduce=(lambda v: mean_over_ranks(v, device)) if ddp.enabled else None,
    )
    with writer if writer is not None else contextlib.nullcontext():
        loop = train_loop(model=train_model, state=state, data_loader=loader, max_iter=int(cfg.solver.max_iter),
                          device=device, options=options, hooks=hooks)

    # 6. The replicas agree; the final metrics and the run's wall time.
    if ddp.enabled:
        broadcast_buffers(state.model)
        if not replicas_agree(state.model):
            raise DetectorError(f"the {ddp.world_size} replicas ended with different weights; this is a bug, please report it")
        log.info("DDP: the %d replicas hold identical weights at the end of training", ddp.world_size)
    metrics = {k: loop.metrics[k] for k in METRIC_KEYS if k in loop.metrics}
    if ddp.is_main:
        # Wall time of model building, training and the final evaluation (benchmarks/ablate.py reads it).
        atomic_write_json(output_dir / "timing.json", {"total_seconds": round(time.perf_counter() - started, 2)})
        report(f"output: {output_dir}")
        report("val " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()))  # console and train.log
    return metrics



def check_batch(cfg: DictConfig, world_size: int, train_set: DetectionDataset) -> None:
    """The global batch divides over the processes and fits the data; a warmup longer than the run is said."""
    solver = cfg.solver
    if int(solver.ims_per_batch) % world_size:
        raise ConfigError(
            f"solver.ims_per_batch={solver.ims_per_batch} is the global batch; it must be a multiple of the "
            f"{world_size} processes"
        )
    if len(train_set) < solver.ims_per_batch:
        raise DatasetError(
            f"{train_set.source}: {len(train_set)} usable images, fewer than solver.ims_per_batch={solver.ims_per_batch}"
        )
    if int(solver.warmup_iters) >= int(solver.max_iter):
        log.warning("solver.warmup_iters=%d >= solver.max_iter=%d: the whole run is warmup, the lr never reaches "
                    "solver.base_lr", solver.warmup_iters, solver.max_iter)
    if cfg.model.get("weights") and cfg.resume is True:
        raise ConfigError(
            "model.weights starts a new run from other weights and resume=true continues this one; use one of them"
        )


def build_state(cfg: DictConfig, ddp, device: torch.device, train_set: DetectionDataset,
                checkpoint: dict | None) -> tuple[TrainState, torch.dtype | None]:
    """The model (fresh, fine-tuned or resumed), optimizer, schedule and loss scaler; and the autocast dtype."""
    solver, model_cfg = cfg.solver, cfg.model
    if checkpoint is not None:
        # The checkpoint brings every weight: do not load (or download) pretrained ones first.
        model_cfg = model_cfg.copy()
        model_cfg.backbone.weights = None
    model = build_model(model_cfg, class_names=train_set.class_names)
    if cfg.model.get("weights") and checkpoint is None:
        finetune_from(model, str(cfg.model.weights), train_set.class_names)
    if cfg.model.get("sync_bn"):
        if device.type != "cuda":
            raise ConfigError("model.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel); on CPU leave it false")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.get("compile"):
        log.info("compile=true: torch.compile of %s (the first step, each new padded image size and the "
                 "evaluation compile first; docs/speed.md)", ", ".join(compile_parts(model)))
    optimizer = build_optimizer(model, base_lr=solver.base_lr, momentum=solver.momentum,
                                weight_decay=solver.weight_decay,
                                backbone_lr_factor=float(solver.get("backbone_lr_factor", 1.0)))
    # solver.amp: bf16 / fp16 autocast in the forward; fp16 also scales the loss (detector/engine/step.py).
    amp = amp_dtype(cfg, device) if ddp.is_main else resolve_amp(amp_mode(cfg), device).dtype
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    state = TrainState(model=model, optimizer=optimizer, scaler=scaler)
    decay = float(solver.get("ema_decay", 0.0))
    if decay > 0:  # the run evaluates and saves a moving average of its weights (detector/engine/ema.py)
        state.average = build_weight_average(model, decay=decay)
        if cfg.get("compile"):  # a deep copy runs eagerly: compile the evaluated model's parts too
            compile_parts(state.average.module)
    if checkpoint is not None:
        try:
            state.load_state_dict(checkpoint)
            if ("ema" in checkpoint) != (state.average is not None):
                log.warning("resuming with solver.ema_decay=%s from a checkpoint written %s a moving average: %s",
                            decay, "with" if "ema" in checkpoint else "without",
                            "training continues from its training weights, no average" if "ema" in checkpoint
                            else "the average starts now, from its weights")
        except ValueError as err:  # the optimizer's groups differ from the checkpoint's (detector.engine.state)
            raise ConfigError(
                f"{cfg.output_dir}: resuming: {err}: resume with the solver.backbone_lr_factor it was trained "
                "with (1 gives 2 groups, any other value 4), or start from its weights with "
                "model.weights=<checkpoint>") from None
    # The RPN's and RoI sampler's draws not tied to a sample: rank r > 0 from seed + r (rank 0, and one
    # process, continue the stream the model's initialisation drew from; DDP gives every rank rank 0's
    # initial weights).
    if ddp.rank > 0:
        torch.manual_seed(int(cfg.seed) + ddp.rank)
    if checkpoint is not None:
        states = checkpoint.get("extra", {}).get("rng_per_rank") or []
        if len(states) == ddp.world_size:
            # Last: building the model drew from the RNG; the run continues the checkpoint's stream.
            set_rng_state(states[ddp.rank])
    # The schedule is always rebuilt from this run's config (a resumed run may extend max_iter) and
    # fast-forwarded to the checkpoint's iteration.
    state.scheduler = build_lr_scheduler(
        optimizer, max_iter=solver.max_iter, warmup_iters=solver.warmup_iters, warmup_factor=solver.warmup_factor,
        schedule=solver.schedule, steps=list(solver.steps), gamma=solver.gamma, start_iter=state.iteration,
    )
    return state, amp


class RunCheckpoints:
    """``save(iteration) -> path``: the checkpoint of this run (rank 0 writes; every rank's RNG inside)."""

    def __init__(self, cfg: DictConfig, ddp, state: TrainState, output_dir: Path, *, resolved: dict,
                 train_set: DetectionDataset) -> None:
        self.cfg, self.ddp, self.state, self.output_dir, self.resolved = cfg, ddp, state, output_dir, resolved
        self.dataset_info = {
            "class_names": list(train_set.class_names),
            "label_to_cat_id": {int(k): int(v) for k, v in train_set.label_to_cat_id.items()},
            "train_source": train_set.source,
        }

    def __call__(self, it: int) -> Path:
        name = "model_final.pth" if it == self.cfg.solver.max_iter else f"model_{it:07d}.pth"
        broadcast_buffers(self.state.model)  # rank 0's BatchNorm statistics are the model's (DDP's rule)
        bad = check_finite(self.state.model)
        if self.state.average is not None:
            broadcast_buffers(self.state.eval_model)  # every rank decides on rank 0's average, as it is saved
            bad += [f"average.{name}" for name in check_finite(self.state.eval_model)]
        if bad:
            # Never let last_checkpoint name poisoned weights: a resume would fail on them again.
            raise NonFiniteError(
                f"iteration {it}: {len(bad)} weight tensor(s) are not finite ({', '.join(bad[:3])}); {name} not "
                f"written, last good checkpoint: {find_last_checkpoint(self.output_dir) or 'none'}; lower solver.base_lr"
            )
        rng_per_rank = all_gather_objects(rng_state())  # every rank's stream, for an exact resume
        if self.ddp.is_main:  # the unwrapped model: no "module." prefix, readable by eval and fine-tuning
            save_checkpoint(
                self.output_dir / name, self.state, config=self.resolved,
                extra={"dataset": self.dataset_info, "rng_per_rank": rng_per_rank},
                keep_last=int(self.cfg.checkpoint_keep_last),
            )
        barrier()
        return self.output_dir / name


class RunEvaluation:
    """``evaluate(iteration) -> metrics`` on the val split, sharded over the ranks and gathered on rank 0."""

    def __init__(self, cfg: DictConfig, ddp, model, val_set: DetectionDataset, output_dir: Path, *,
                 device: torch.device, writer, amp_dtype: torch.dtype | None = None) -> None:
        self.cfg, self.ddp, self.model, self.val_set = cfg, ddp, model, val_set
        self.amp_dtype = amp_dtype  # the run's solver.amp: evaluated in the precision it trained in
        self.output_dir, self.device, self.writer = output_dir, device, writer
        shard = val_set if not ddp.enabled else torch.utils.data.Subset(val_set, range(ddp.rank, len(val_set), ddp.world_size))
        self.loader = build_detection_loader(
            shard, batch_size=int(cfg.solver.ims_per_batch), shuffle=False,
            num_workers=loader_workers(cfg.num_workers, device)[0],
        )

    def __call__(self, it: int) -> dict[str, float]:
        final = it == self.cfg.solver.max_iter
        broadcast_buffers(self.model)  # every shard scored by the one model a checkpoint holds
        evaluator = COCOEvaluator(
            coco_gt=self.val_set.coco, label_to_cat_id=self.val_set.label_to_cat_id,
            output_dir=(self.output_dir if final else self.output_dir / "eval" / f"iter_{it:07d}") if self.ddp.is_main else None,
            gather=all_gather_objects if self.ddp.enabled else None,
        )
        metrics = inference_on_dataset(
            self.model, self.loader, evaluator, device=self.device, progress=bool(self.cfg.progress) and self.ddp.is_main,
            amp_dtype=self.amp_dtype,
        )
        if self.writer is not None:
            log_val_images(self.model, self.val_set, self.writer, it, self.device)
        return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@run_cli
def main(cfg: DictConfig) -> float:
    # Returning a float makes the value visible to Hydra sweepers (e.g. Optuna) as the objective.
    if cfg.training == "alternating":
        from detector.cli.alternating import train_alternating

        return train_alternating(cfg, run_directory(cfg)).get("AP50", float("nan"))
    if cfg.training != "joint":
        raise ConfigError(f"training must be joint or alternating, got {cfg.training!r}")
    try:
        return train(cfg).get("AP50", float("nan"))
    finally:
        shutdown_distributed()  # the process group lives as long as this run (torchrun: one per process)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="train", config_name="train", doc=__doc__)


if __name__ == "__main__":
    run()
