"""The Faster R-CNN paper's 4-step alternating training (Ren et al. 2015, section 3.2), one command.

    python tools/train.py training=alternating output_dir=outputs/alternating

1. Train the RPN from the initial backbone (the detector head's loss weighted 0: it runs, but
   teaches nothing). Dump its proposals for both splits.
2. Train a Fast R-CNN on step 1's proposals, from the initial backbone again.
3. Initialise from step 2's backbone and detector head and step 1's RPN; freeze the shared
   convolutions (``model.backbone.freeze_at=5``: all 5 stages); train the RPN-only layers (the
   detector head's loss weighted 0). Dump its proposals.
4. Keep the shared convolutions frozen; train the Fast R-CNN-only layers (initialised from step 2)
   on step 3's proposals.

The final model is a normal Faster R-CNN checkpoint, ``OUT/model_final.pth``: step 4's backbone
(= step 2's, frozen since) and detector head with step 3's RPN; it is evaluated on the val split
(``OUT/metrics.json``). Every step keeps its run folder (``OUT/step<k>_*``: checkpoints, logs,
metrics) and steps 1 and 3 their proposal files. Each step trains ``solver.max_iter`` iterations
with the same solver (the paper: 80k / 60k iterations per step on VOC).

Only ``tools/`` code: the steps are ordinary ``train(cfg)`` runs with overrides, so nothing in
``detector/`` knows about the schedule.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from detector.cli.config import build_split, loader_workers, model_from_checkpoint, report
from detector.cli.stored_config import targets_in
from detector.data import build_detection_loader
from detector.engine import TrainState, load_checkpoint, save_checkpoint
from detector.evaluation import METRIC_KEYS, COCOEvaluator, inference_on_dataset
from detector.utils.env import resolve_device

ALL_STAGES = 5  # VGG16's conv stages: freeze_at=5 freezes every shared convolution


def _step_config(cfg: DictConfig, *, fast_rcnn: bool, freeze: bool, head_loss: float, weights: str | None,
                 proposals: tuple[Path, Path] | None) -> DictConfig:
    step = copy.deepcopy(cfg)
    with open_dict(step):
        step.training = "joint"
        step.model.weights = weights
        step.model.roi_heads.loss_weight = head_loss
        if freeze:
            step.model.backbone.freeze_at = ALL_STAGES
        if fast_rcnn:
            step.model.rpn = None
            step.model.setdefault("proposal_topk_train", cfg.model.rpn.post_nms_topk_train)
            step.model.setdefault("proposal_topk_test", cfg.model.rpn.post_nms_topk_test)
        if proposals is not None:
            step.dataset.train.proposals, step.dataset.val.proposals = str(proposals[0]), str(proposals[1])
    return step


def _dump(checkpoint: Path, folder: Path, cfg: DictConfig) -> tuple[Path, Path]:
    from detector.cli.dump_proposals import dump

    files = []
    for split in ("train", "val"):
        out = folder / f"proposals_{split}.pt"
        dump(OmegaConf.create({
            "checkpoint": str(checkpoint), "split": split, "output": str(out), "num_proposals": 1000,
            "device": cfg.device, "batch_size": int(cfg.solver.ims_per_batch),
            "num_workers": loader_workers(cfg.num_workers, resolve_device(cfg.device))[0],
            "progress": bool(cfg.progress), "dataset": None,
            # The checkpoint is this run's own: the parts the user's config names are the user's choice.
            "trusted_targets": targets_in(OmegaConf.to_container(cfg, resolve=True)),
        }))
        files.append(out)
    return files[0], files[1]


def _merge(out: Path, parts: list[tuple[Path, tuple[str, ...]]]) -> Path:
    """A plain state dict of the named prefixes, each taken from its checkpoint (later ones win)."""
    state: dict[str, torch.Tensor] = {}
    for path, prefixes in parts:
        weights = load_checkpoint(path)["model"]
        state.update({k: v for k, v in weights.items() if k.startswith(prefixes)})
    torch.save(state, out)
    return out


def train_alternating(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """Run the four steps under ``output_dir``; returns the final model's val metrics."""
    from detector.cli.train import train

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.model.get("rpn") is None:
        from detector.errors import ConfigError

        raise ConfigError("training=alternating trains a Faster R-CNN: the model needs an RPN (not model=fast_rcnn_vgg16)")
    initial = cfg.model.get("weights")
    dirs = {k: output_dir / name for k, name in ((1, "step1_rpn"), (2, "step2_fast_rcnn"), (3, "step3_rpn"), (4, "step4_fast_rcnn"))}

    report("alternating training, step 1/4: the RPN from the initial backbone")
    train(_step_config(cfg, fast_rcnn=False, freeze=False, head_loss=0.0, weights=initial, proposals=None), dirs[1])
    step1 = dirs[1] / "model_final.pth"
    proposals1 = _dump(step1, dirs[1], cfg)

    report("alternating training, step 2/4: Fast R-CNN on step 1's proposals, from the initial backbone")
    train(_step_config(cfg, fast_rcnn=True, freeze=False, head_loss=1.0, weights=initial, proposals=proposals1), dirs[2])
    step2 = dirs[2] / "model_final.pth"

    report("alternating training, step 3/4: the RPN-only layers on step 2's frozen backbone")
    init3 = _merge(output_dir / "init_step3.pth", [(step1, ("rpn.",)), (step2, ("backbone.", "roi_heads."))])
    train(_step_config(cfg, fast_rcnn=False, freeze=True, head_loss=0.0, weights=str(init3), proposals=None), dirs[3])
    step3 = dirs[3] / "model_final.pth"
    proposals3 = _dump(step3, dirs[3], cfg)

    report("alternating training, step 4/4: the Fast R-CNN-only layers on step 3's proposals")
    init4 = _merge(output_dir / "init_step4.pth", [(step3, ("backbone.",)), (step2, ("roi_heads.",))])
    train(_step_config(cfg, fast_rcnn=True, freeze=True, head_loss=1.0, weights=str(init4), proposals=proposals3), dirs[4])
    step4 = dirs[4] / "model_final.pth"

    # The final Faster R-CNN: step 4's shared layers and head, step 3's RPN, the base config.
    final_state = load_checkpoint(step3)
    weights = dict(final_state["model"])
    weights.update({k: v for k, v in load_checkpoint(step4)["model"].items() if k.startswith(("backbone.", "roi_heads."))})
    resolved = OmegaConf.to_container(cfg, resolve=True)
    with_model = copy.deepcopy(final_state["extra"])
    final = save_checkpoint(
        output_dir / "model_final.pth", TrainState(model=_Weights(weights), iteration=int(cfg.solver.max_iter)),
        config=resolved, extra={**with_model, "alternating": {k: str(d) for k, d in dirs.items()}},
    )
    return _evaluate(final, cfg, output_dir)


class _Weights(torch.nn.Module):
    """A state dict that :func:`save_checkpoint` can store like a model's."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):  # noqa: D102
        return dict(self._state)


def _evaluate(checkpoint: Path, cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    device = resolve_device(cfg.device)
    model, _ = model_from_checkpoint(checkpoint, load_checkpoint(checkpoint), device,
                                     trusted_targets=targets_in(OmegaConf.to_container(cfg.model, resolve=True)))
    val_set = build_split(cfg.dataset.val, what="dataset.val")
    loader = build_detection_loader(val_set, batch_size=int(cfg.solver.ims_per_batch), shuffle=False,
                                    num_workers=loader_workers(cfg.num_workers, device)[0])
    evaluator = COCOEvaluator(coco_gt=val_set.coco, label_to_cat_id=val_set.label_to_cat_id, output_dir=output_dir)
    metrics = inference_on_dataset(model, loader, evaluator, device=device, progress=bool(cfg.progress))
    report(f"output: {output_dir}")
    report("val " + "  ".join(f"{k}={metrics[k]:.4f}" for k in METRIC_KEYS))
    return metrics
