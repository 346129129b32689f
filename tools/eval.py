"""Evaluate one or more checkpoints on a dataset's val split and print their COCO metrics side by side.

    python tools/eval.py checkpoints='[outputs/pool/model_final.pth,outputs/align/model_final.pth]'
    python tools/eval.py checkpoints='[A.pth]' dataset=coco_json dataset.val.images=DIR \
        dataset.val.annotations=FILE output_dir=outputs/eval_a

Each model is rebuilt from the config stored in its checkpoint (so its pooler and options are the
ones it was trained with). Per checkpoint, ``OUT/<i>_<name>/`` receives ``coco_results.json`` and
``metrics.json`` and ``analysis.json``; ``OUT/comparison.json`` and ``OUT/comparison.md`` hold the
table (COCO AP..APl, VOC07 11-point and VOC area mAP@0.5, mean IoU of true positives, images/s),
``OUT/plots/`` the charts (AP against IoU threshold, per-class AP, precision/recall at 0.5 and 0.75,
true-positive IoU histogram, AP by object size).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from config_utils import build_model, run_cli
from detector.data import CocoDetection, build_detection_loader
from detector.engine import load_checkpoint
from detector.errors import CheckpointError, ConfigError
from detector.evaluation import METRIC_KEYS, COCOEvaluator, inference_on_dataset, make_cocoeval
from detector.evaluation.analysis import analyze
from detector.evaluation.plots import plot_all
from detector.utils.env import resolve_device
from detector.utils.io import atomic_write_json, atomic_write_text


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


def json_safe(obj):
    """NaN (AP undefined: no ground truth of that kind) -> null, so the files stay strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def evaluate(cfg: DictConfig) -> list[dict]:
    checkpoints = cfg.checkpoints
    if isinstance(checkpoints, str):
        checkpoints = [checkpoints]
    if not isinstance(checkpoints, (list, ListConfig)) or not checkpoints:
        raise ConfigError(f"checkpoints must be a list of checkpoint files, got {checkpoints!r}")
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.device)

    # Read every checkpoint first: a mistake in the last one should not cost the first one's eval.
    states = []
    for path in checkpoints:
        path = Path(str(path))
        state = load_checkpoint(path)
        stored = state.get("config")
        if not isinstance(stored, dict) or "model" not in stored or "dataset" not in stored:
            raise CheckpointError(f"{path} holds no training config; it was not written by tools/train.py")
        states.append((path, state, stored))
    if cfg.get("dataset") is None:
        vals = {str(stored["dataset"]["val"]["annotations"]) for _, _, stored in states}
        if len(vals) > 1:
            raise CheckpointError(
                f"the checkpoints were trained on different datasets ({', '.join(sorted(vals))}); "
                f"pass dataset=... to evaluate them all on one"
            )

    rows, analyses = [], {}
    for i, (path, state, stored) in enumerate(states):
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
        results = json.loads((output_dir / name / "coco_results.json").read_text())
        # The same images the metrics columns scored (every image of the split).
        analysis = analyze(make_cocoeval(dataset.coco, results, img_ids=dataset.ids))
        atomic_write_json(output_dir / name / "analysis.json", json_safe(analysis))
        label = f"{i}: {describe_pooler(stored['model'])}"
        analyses[label] = analysis
        rows.append({
            "checkpoint": str(path),
            "pooler": describe_pooler(stored["model"]),
            "iteration": int(state.get("iteration", -1)),
            **{k: metrics.get(k) for k in METRIC_KEYS},
            "VOC07": analysis["VOC07_mAP50"],
            "VOC": analysis["VOC_mAP50"],
            "TP_IoU": analysis["mean_tp_iou"],
            "images_per_second": metrics.get("images_per_second"),
        })

    atomic_write_json(output_dir / "comparison.json", json_safe(rows))
    atomic_write_text(output_dir / "comparison.md", format_markdown(rows))
    plots = plot_all(analyses, output_dir / "plots")
    print(format_table(rows))
    print(f"plots: {', '.join(str(p) for p in plots)}")
    print(f"output: {output_dir}")
    return rows


COLUMNS = (*METRIC_KEYS, "VOC07", "VOC", "TP_IoU")
LEGEND = (
    "AP..APl: COCO (pycocotools), in %; VOC07: VOC2007 11-point mAP@0.5; VOC: VOC2010+ area mAP@0.5; "
    "TP_IoU: mean IoU of the true positives at IoU 0.5; img/s: end-to-end inference speed"
)


def _pct(v) -> str:
    return "nan" if v is None or v != v else f"{100 * v:.2f}"


def format_table(rows: list[dict]) -> str:
    header = f"{'#':>2}  {'pooler':<30} " + " ".join(f"{k:>6}" for k in COLUMNS) + f" {'img/s':>7}  checkpoint"
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows):
        lines.append(
            f"{i:>2}  {r['pooler']:<30} " + " ".join(f"{_pct(r[k]):>6}" for k in COLUMNS)
            + f" {r['images_per_second'] or 0:7.1f}  {r['checkpoint']}"
        )
    return "\n".join(lines) + "\n" + LEGEND


def format_markdown(rows: list[dict]) -> str:
    lines = [
        "| # | pooler | " + " | ".join(COLUMNS) + " | img/s | checkpoint |",
        "|---|---|" + "---:|" * len(COLUMNS) + "---:|---|",
    ]
    for i, r in enumerate(rows):
        lines.append(
            f"| {i} | {r['pooler']} | " + " | ".join(_pct(r[k]) for k in COLUMNS)
            + f" | {r['images_per_second'] or 0:.1f} | `{r['checkpoint']}` |"
        )
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
@run_cli
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
