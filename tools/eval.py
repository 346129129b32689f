"""Evaluate one or more checkpoints on a dataset's val split and print their COCO metrics side by side.

    python tools/eval.py checkpoints='[outputs/pool/model_final.pth,outputs/align/model_final.pth]'
    python tools/eval.py checkpoints='[A.pth]' dataset=coco_json dataset.val.images=DIR \
        dataset.val.annotations=FILE output_dir=outputs/eval_a

Each model is rebuilt from the config stored in its checkpoint (so its pooler and options are the
ones it was trained with). Per checkpoint, ``OUT/<i>_<name>/`` receives ``coco_results.json`` and
``metrics.json``; ``OUT/comparison.json`` holds the table.
"""

from __future__ import annotations

import re
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from config_utils import build_model, run_cli
from detector.data import CocoDetection, build_detection_loader
from detector.engine import load_checkpoint
from detector.errors import CheckpointError, ConfigError
from detector.evaluation import METRIC_KEYS, COCOEvaluator, inference_on_dataset
from detector.utils.env import resolve_device
from detector.utils.io import atomic_write_json


def describe_pooler(model_cfg: dict) -> str:
    """A short label such as ``RoIAlign(s32, sr2, aligned)`` or ``RoIPool(s32)`` from a stored config."""
    pooler = model_cfg["pooler"]
    stride = model_cfg["backbone"]["stride"]
    name = pooler["_target_"].rsplit(".", 1)[-1]
    parts = [f"s{stride}"]
    if name == "RoIAlign":
        parts.append(f"sr{pooler['sampling_ratio']}")
        parts.append("aligned" if pooler["aligned"] else "unaligned")
        for key, default in (("reduction", "avg"), ("sample_layout", "centered")):
            if pooler.get(key, default) != default:
                parts.append(str(pooler[key]))
    elif pooler.get("quantization", "round") != "round":
        parts.append(str(pooler["quantization"]))
    return f"{name}({', '.join(parts)})"


def val_dataset_for(cfg: DictConfig, stored: dict) -> CocoDetection:
    """The val split from the command line's ``dataset=...``, else from the checkpoint's config."""
    if cfg.get("dataset") is not None:
        val = cfg.dataset.val
        return CocoDetection(images=val.images, annotations=val.annotations)
    val = stored["dataset"]["val"]
    return CocoDetection(images=val["images"], annotations=val["annotations"])


def evaluate(cfg: DictConfig) -> list[dict]:
    checkpoints = cfg.checkpoints
    if isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if not isinstance(checkpoints, (list, ListConfig)) or not checkpoints:
        raise ConfigError(f"checkpoints must be a list of checkpoint files, got {checkpoints!r}")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)

    rows = []
    for i, path in enumerate(checkpoints):
        path = Path(str(path))
        state = load_checkpoint(path)
        stored = state.get("config")
        if not isinstance(stored, dict) or "model" not in stored:
            raise CheckpointError(f"{path} holds no training config; it was not written by tools/train.py")
        dataset = val_dataset_for(cfg, stored)
        trained_classes = list(state.get("extra", {}).get("dataset", {}).get("class_names", []))
        if trained_classes and trained_classes != list(dataset.class_names):
            raise CheckpointError(
                f"{path} was trained on classes {trained_classes} but the evaluation dataset "
                f"has {list(dataset.class_names)}"
            )
        model_cfg = OmegaConf.create(stored["model"])
        model_cfg.backbone.weights = None  # the checkpoint brings every weight: load nothing first
        model = build_model(model_cfg, num_classes=dataset.num_classes)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit its stored config: {str(e).splitlines()[0]}") from None
        model.to(device)
        name = f"{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', path.parent.name + '_' + path.stem)}"
        loader = build_detection_loader(
            dataset, batch_size=int(cfg.batch_size), shuffle=False, num_workers=int(cfg.num_workers)
        )
        evaluator = COCOEvaluator(
            coco_gt=dataset.coco, label_to_cat_id=dataset.label_to_cat_id, output_dir=output_dir / name
        )
        metrics = inference_on_dataset(
            model, loader, evaluator, device=device, progress=bool(cfg.progress), desc=name
        )
        rows.append({
            "checkpoint": str(path),
            "pooler": describe_pooler(stored["model"]),
            "iteration": int(state.get("iteration", -1)),
            **{k: metrics.get(k) for k in METRIC_KEYS},
            "images_per_second": metrics.get("images_per_second"),
        })

    atomic_write_json(output_dir / "comparison.json", rows)
    print(format_table(rows))
    print(f"output: {output_dir}")
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(v):
        return "   nan" if v is None or v != v else f"{100 * v:6.2f}"

    header = f"{'#':>2}  {'pooler':<32} " + " ".join(f"{k:>6}" for k in METRIC_KEYS) + f" {'img/s':>7}  checkpoint"
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows):
        lines.append(
            f"{i:>2}  {r['pooler']:<32} " + " ".join(fmt(r[k]) for k in METRIC_KEYS)
            + f" {r['images_per_second'] or 0:7.1f}  {r['checkpoint']}"
        )
    return "\n".join(lines) + "\n(AP columns in %, COCO definitions via pycocotools)"


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
@run_cli
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
