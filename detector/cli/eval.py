"""Evaluate one or more checkpoints on a dataset's val split and print their COCO metrics side by side.

    python tools/eval.py checkpoints='[outputs/pool/model_final.pth,outputs/align/model_final.pth]'
    python tools/eval.py checkpoints='[A.pth]' dataset=coco_json dataset.val.images=DIR \
        dataset.val.annotations=FILE output_dir=outputs/eval_a

Each model is rebuilt from the config stored in its checkpoint (so its pooler and options are the
ones it was trained with). Per checkpoint, ``OUT/<i>_<name>/`` receives ``coco_results.json`` and
``metrics.json`` and ``analysis.json``; ``OUT/comparison.json`` and ``OUT/comparison.md`` hold the
table (COCO AP..APl, VOC07 11-point and VOC area mAP@0.5, mean IoU of true positives, images/s),
``OUT/plots/`` the charts (AP against IoU threshold, per-class AP, precision/recall at 0.5 and 0.75,
true-positive IoU histogram, AP by object size). ``OUT/eval.log`` keeps the log and the printed table,
as ``train.log`` does for a training run.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from detector.cli.config import (
    CONFIG_DIR,
    checked_amp_mode,
    checked_workers,
    checkpoint_amp_dtype,
    build_split,
    console_logging_for,
    loader_workers,
    model_from_checkpoint,
    report,
    run_cli,
    run_directory,
    stored_model_config,
)
from detector.cli.help import run_command
from detector.cli.stored_config import stored_config
from detector.data import DetectionDataset, build_detection_loader
from detector.engine import load_checkpoint
from detector.errors import CheckpointError, ConfigError, DatasetError
from detector.evaluation import (
    COCO_KEYS,
    METRIC_KEYS,
    COCOEvaluator,
    inference_on_dataset,
    make_cocoeval,
)
from detector.evaluation.analysis import analyze
from detector.evaluation.coco_evaluator import summarize
from detector.evaluation.quantization import by_size, resized_gt_boxes
from detector.evaluation.seeds import experiment_key, mean_std, paired_comparison, pooler_pairs, seed_groups
from detector.evaluation.plots import plot_all, plot_seed_groups
from detector.evaluation.proposal_recall import counted_ground_truth, proposal_recall
from detector.evaluation.report import format_markdown, format_table, json_safe
from detector.evaluation.voc import write_voc_results
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
    elif name == "RoIWarp":
        parts.append(f"sr{pooler['sampling_ratio']}")
        if pooler.get("reduction", "avg") != "avg":
            parts.append(str(pooler["reduction"]))
    elif pooler.get("quantization", "round") != "round":
        parts.append(str(pooler["quantization"]))
    return f"{name}({', '.join(parts)})"


def load_results_file(path: Path, dataset: DetectionDataset) -> list[dict]:
    """COCO results of any detector, with ids mapped to ``dataset``'s (see :func:`match_results`)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: results file not found") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(results, list):
        raise DatasetError(f"{path}: expected a JSON list of detections (COCO results format)")
    return match_results(results, dataset, source=str(path))


def match_results(results: list, dataset: DetectionDataset, *, source: str) -> list[dict]:
    """Map each detection's ``image_id`` and ``category_id`` onto the dataset's.

    So that files from other tools work unchanged, ``image_id`` may be the dataset's image id or the
    image's file name (with or without folders and extension, e.g. VOC's ``2007_000027``), and
    ``category_id`` the dataset's category id or the class name. Anything that matches nothing is
    one line naming the first unknown value.
    """
    images = dataset.coco.imgs
    by_name: dict[str, int] = {}
    for image_id, info in images.items():
        name = Path(str(info["file_name"]))
        for key in (str(info["file_name"]), name.name, name.stem):
            by_name.setdefault(key, image_id)
    cats = dataset.coco.cats
    by_class = {str(c["name"]): cat_id for cat_id, c in cats.items()}
    _check_id_shift(results, images, source, str(dataset.source))
    out = []
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= r.keys():
            raise DatasetError(f"{source}: detection {i} lacks image_id, category_id, bbox or score: {r!r:.120}")
        image_id = _resolve(r["image_id"], images, by_name, f"{source}: detection {i} has image_id",
                            f"an image id nor an image file name of {dataset.source}")
        cat = _resolve(r["category_id"], cats, by_class, f"{source}: detection {i} has category_id",
                       f"a category id nor a class name of {dataset.source} ({', '.join(dataset.class_names)})")
        bbox, score = r["bbox"], r["score"]
        if (not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox)
                or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0):
            raise DatasetError(
                f"{source}: detection {i} has bbox {bbox!r:.80}; expected [x, y, width, height], four finite numbers "
                f"with width, height >= 0 (COCO results format)"
            )
        if not _is_number(score) or not math.isfinite(score):
            raise DatasetError(f"{source}: detection {i} has score {score!r:.40}; expected a finite number")
        out.append({"image_id": int(image_id), "category_id": int(cat), "bbox": [float(v) for v in bbox],
                    "score": float(score)})
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate(cfg: DictConfig) -> list[dict]:
    checkpoints = list(_as_list(cfg.get("checkpoints"), "checkpoints"))
    results_files = list(_as_list(cfg.get("results"), "results"))
    if not checkpoints and not results_files:
        raise ConfigError("nothing to evaluate: pass checkpoints='[A.pth,...]' and/or results='[A.json,...]'")
    if results_files and cfg.get("dataset") is None:
        raise ConfigError("results=... needs dataset=... (the ground truth the detections were made on)")
    voc_ious = _voc_ious(cfg.get("voc_iou", [0.5]))
    if cfg.get("amp") is not None:
        checked_amp_mode(cfg.amp, "amp")  # a bad value stops before any checkpoint is evaluated
    value = cfg.get("batch_size")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {value!r}")
    checked_workers(cfg.get("num_workers"))
    console_logging_for(bool(cfg.progress))
    output_dir = run_directory(cfg)
    device = resolve_device(cfg.device)
    workers, why = loader_workers(cfg.num_workers, device)
    logging.getLogger("detector").info(why)
    trusted = [str(t) for t in _as_list(cfg.get("trusted_targets"), "trusted_targets")]

    # Read every checkpoint first: a mistake in the last one should not cost the first one's eval.
    states = []
    for path in checkpoints:
        path = Path(str(path))
        state = load_checkpoint(path)
        stored = stored_config(state, source=path)
        stored_model_config(path, state, trusted_targets=trusted)  # refused here, before anything is built
        if cfg.get("dataset") is None and not isinstance((stored.get("dataset") or {}).get("val"), dict):
            raise CheckpointError(f"{path} stores no val split; pass dataset=... to name the data to evaluate on")
        states.append((path, state, stored))
    if cfg.get("dataset") is None:
        vals = {json.dumps(stored["dataset"]["val"], sort_keys=True) for _, _, stored in states}
        if len(vals) > 1:
            raise CheckpointError(
                "the checkpoints were trained on different datasets; pass dataset=... to evaluate them all on one"
            )
    # Scoring a results file reads no image: without checkpoints the images need not be there.
    files_needed = {} if checkpoints else {"check_files": False}
    shared = None
    if cfg.get("dataset") is not None:
        val_node = cfg.dataset.val
        if not checkpoints and "images" in val_node.keys() and OmegaConf.is_missing(val_node, "images"):
            val_node = OmegaConf.merge(val_node, {"images": None})  # left out: fine, nothing is read
        shared = build_split(val_node, what="dataset.val", **files_needed)

    rows, analyses, notes, seed_runs, quantized = [], {}, [], [], {}
    entries = [("checkpoint", s) for s in states] + [("results", Path(str(p))) for p in results_files]
    for i, (kind, entry) in enumerate(entries):
        if kind == "checkpoint":
            path, state, stored = entry
            if stored["model"].get("rpn") is None:  # Fast R-CNN: the val split's proposal file
                own = cfg.get("dataset") is not None
                node = cfg.dataset.val if own else stored["dataset"]["val"]
                if not node.get("proposals"):
                    raise ConfigError(f"{path} is a Fast R-CNN: pass dataset.val.proposals=FILE (proposals for the val split)")
                dataset = build_split(
                    node, what="dataset.val" if own else "config.dataset.val", from_file=None if own else path,
                    trusted_targets=trusted, proposal_topk=stored["model"].get("proposal_topk_test"),
                )
            else:
                dataset = shared or build_split(
                    stored["dataset"]["val"], what="config.dataset.val", from_file=path, trusted_targets=trusted
                )
            model, class_names = model_from_checkpoint(  # test_scale null: the checkpoint's own
                path, state, device, trusted_targets=trusted, test_scale=cfg.get("test_scale"))
            if class_names != list(dataset.class_names):
                raise CheckpointError(
                    f"{path} was trained on classes {class_names} but {dataset.source} has "
                    f"{list(dataset.class_names)}"
                )
            label = ("Fast R-CNN " if stored["model"].get("rpn") is None else "") + describe_pooler(stored["model"])
            name = f"{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', path.parent.name + '_' + path.stem)}"
            loader = build_detection_loader(
                dataset, batch_size=int(cfg.batch_size), shuffle=False, num_workers=workers
            )
            evaluator = COCOEvaluator(
                coco_gt=dataset.coco, label_to_cat_id=dataset.label_to_cat_id, output_dir=output_dir / name
            )
            amp = checkpoint_amp_dtype(cfg.get("amp"), stored, device)  # null: the precision it trained in
            metrics = inference_on_dataset(
                model, loader, evaluator, device=device, progress=bool(cfg.progress), desc=name, amp_dtype=amp
            )
            coco_eval, results, speed = evaluator.coco_eval, evaluator.results, metrics.get("images_per_second")
            pooler_cfg = stored["model"]["pooler"]
            if pooler_cfg["_target_"].endswith("RoIPool"):  # what its quantization does to this split's boxes
                boxes, buckets = resized_gt_boxes(dataset.coco, model.transform.target_size)
                quantized[i] = (str(dataset.source), by_size(
                    boxes, buckets, stride=int(stored["model"]["backbone"]["stride"]),
                    output_size=int(pooler_cfg["output_size"]), rule=str(pooler_cfg.get("quantization", "round"))))
            extra = {"checkpoint": str(path), "pooler": label, "iteration": int(state.get("iteration", -1)),
                     "test_scale": model.transform.test_scale}
            if dataset.proposals is not None:
                recall = proposal_recall(dataset.proposals, counted_ground_truth(dataset))
                extra["proposals"] = {"file": dataset.proposals_file, **recall}
                notes.append(f"{i}: proposals {dataset.proposals_file}: " + "  ".join(
                    f"{k}={v:.3f}" for k, v in recall.items() if k.startswith(("recall@300", "AR"))))
        else:
            path, dataset = entry, shared
            results = load_results_file(path, dataset)
            name = f"{i}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', path.stem)}"
            # Every image of the split is scored: an image the other tool found nothing in is a miss.
            coco_eval = make_cocoeval(dataset.coco, results, img_ids=dataset.ids)
            metrics, _ = summarize(coco_eval)
            atomic_write_json(output_dir / name / "metrics.json", json_safe(metrics))
            label, speed, extra = path.name, None, {"results": str(path)}
        analysis = analyze(coco_eval, voc_protocol=str(cfg.voc_protocol), voc_ious=voc_ious)
        atomic_write_json(output_dir / name / "analysis.json", json_safe(analysis))
        if bool(cfg.voc_results):
            written = write_voc_results(results, dataset, output_dir / name / "voc_results")
            report(f"{name}: VOC devkit results files in {written}")
        analyses[f"{i}: {label}"] = analysis
        rows.append({
            "model": label, "source": str(path), **extra,
            **{k: metrics.get(k) for k in COCO_KEYS},
            "VOC07": analysis["VOC07_mAP50"], "VOC": analysis["VOC_mAP50"], "TP_IoU": analysis["mean_tp_iou"],
            "images_per_second": speed,
            **{k: v for k, v in analysis.items() if k.startswith(("VOC07_mAP", "VOC_mAP"))},
        })
        rows[-1]["dataset"] = str(dataset.source)
        if kind == "checkpoint":
            seed_runs.append({"config": entry[2], "seed": entry[2].get("seed"), "label": label, "row": len(rows) - 1, **rows[-1],
                              "analysis": analysis})

    atomic_write_json(output_dir / "comparison.json", json_safe(rows))
    atomic_write_text(output_dir / "comparison.md", format_markdown(rows))
    plots = plot_all(analyses, output_dir / "plots")
    # On the console and in OUT/eval.log (as train.py's final metrics line is in train.log).
    report(format_table(rows))
    for line in notes:  # Fast R-CNN rows: the recall of the proposals they were given
        report(line)
    report_seeds(seed_runs, output_dir)
    report_quantization_vs_ap(rows, quantized, output_dir, runs=seed_runs)
    report(f"plots: {', '.join(str(p) for p in plots)}")
    report(f"output: {output_dir}")
    return rows


SEED_METRICS = (*METRIC_KEYS, "AR100", "VOC07", "VOC")
SIZE_METRIC = {"small": "APs", "medium": "APm", "large": "APl", "all": "AP"}


def _pct(value: float | None, *, signed: bool = False) -> str:
    if value is None or value != value:
        return "nan"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _seed_quantization_tables(rows: list[dict], quantized: dict[int, tuple[str, dict]], runs: list[dict]):
    """The seed groups' version: one table per RoIPool group and other group that differ in the pooler.

    The quantization columns are the RoIPool group's (they depend on the split, the stride, the bins
    and the resize, not on the seed); the APs are mean +/- std over the seeds both groups have, and
    the gap is the paired comparison of :func:`~detector.evaluation.seeds.paired_comparison`.
    Returns the tables and the row indices they cover.
    """
    groups = seed_groups(runs, metrics=())
    tables, covered = [], set()
    for ga in groups:
        pool_rows = {runs[m]["seed"]: runs[m]["row"] for m in ga["members"]}
        if not all(r in quantized for r in pool_rows.values()):
            continue
        key = experiment_key(runs[ga["members"][0]]["config"], ignore=["model.pooler"])
        for gb in groups:
            other_rows = {runs[m]["seed"]: runs[m]["row"] for m in gb["members"]}
            if gb is ga or any(r in quantized for r in other_rows.values()):
                continue
            if experiment_key(runs[gb["members"][0]]["config"], ignore=["model.pooler"]) != key:
                continue
            seeds = sorted(set(pool_rows) & set(other_rows), key=str)
            if len(seeds) < 2:
                continue
            source, quant = quantized[pool_rows[seeds[0]]]
            entries = []
            for size, q in quant.items():
                metric = SIZE_METRIC[size]
                a = [rows[pool_rows[s]].get(metric) for s in seeds]
                b = [rows[other_rows[s]].get(metric) for s in seeds]
                entry = {"size": size, **q}
                for name, values in (("AP_roipool", a), ("AP_other", b)):
                    entry[name], entry[name + "_std"] = mean_std(values)
                paired = None
                if all(v is not None and v == v for v in (*a, *b)):
                    paired = paired_comparison(a, b)
                entry["gap"] = None if paired is None else paired["mean_diff"]
                entry["gap_std"] = None if paired is None else paired["std_diff"]
                entry["gap_ci95"] = None if paired is None else [paired["ci95_low"], paired["ci95_high"]]
                entries.append(entry)
            tables.append({"roipool": rows[pool_rows[seeds[0]]]["model"], "other": rows[other_rows[seeds[0]]]["model"],
                           "dataset": source, "seeds": seeds, "sizes": entries})
            covered |= {(i, j) for i in pool_rows.values() for j in other_rows.values()}
    return tables, covered


def _pm(mean: float | None, std: float | None) -> str:
    return _pct(mean) if std is None or std != std else f"{_pct(mean)} ± {_pct(std)}"


def report_quantization_vs_ap(rows: list[dict], quantized: dict[int, tuple[str, dict]], output_dir: Path,
                              runs: list[dict] | None = None) -> None:
    """Per object size: what RoIPool's quantization does to the split's boxes, next to the AP gap there.

    For every RoIPool checkpoint and every other checkpoint scored on the same split: the boxes of
    each COCO size bucket, RoIPool's mean origin shift, fraction cut away and fraction added (as
    ``roilens analyze`` measures them, at the checkpoint's stride, bins and resize), and both APs.
    Checkpoints that differ only in their seed (``runs``, as :func:`report_seeds` groups them) give one
    table per pair of groups instead, with the APs as mean ± std over the seeds and the gap paired by
    seed with its 95 % bootstrap interval.
    """
    tables, covered = _seed_quantization_tables(rows, quantized, runs or [])
    for i, (source, quant) in quantized.items():
        for j, other in enumerate(rows):
            if j == i or j in quantized or other.get("dataset") != source or "checkpoint" not in other:
                continue
            if (i, j) in covered:
                continue
            entries = []
            for size, q in quant.items():
                a, b = rows[i].get(SIZE_METRIC[size]), other.get(SIZE_METRIC[size])
                gap = None if a is None or b is None or a != a or b != b else b - a
                entries.append({"size": size, **q, "AP_roipool": a, "AP_other": b, "gap": gap})
            tables.append({"roipool": rows[i]["model"], "other": other["model"], "dataset": source, "sizes": entries})
    if not tables:
        return
    atomic_write_json(output_dir / "quantization_vs_ap.json", json_safe(tables))
    lines = []
    for t in tables:
        seeded = "seeds" in t
        lines += [f"RoIPool's quantization against the AP gap: {t['other']} - {t['roipool']} on {t['dataset']}"
                  + (f", seeds {t['seeds']} (mean ± std; gap paired by seed, 95 % bootstrap interval)" if seeded else ""),
                  "| size | boxes | origin shift (px) | box cut away | region outside | AP RoIPool | AP other | gap |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for e in t["sizes"]:
            if not e["count"]:  # no box of this size on the split: nothing measured, nothing scored
                lines.append(f"| {e['size']} | 0 | — | — | — | — | — | — |")
                continue
            if seeded:
                ci = e["gap_ci95"]
                aps = f"{_pm(e['AP_roipool'], e['AP_roipool_std'])} | {_pm(e['AP_other'], e['AP_other_std'])} | "
                gap = _pct(e["gap"], signed=True) + ("" if ci is None else f" [{_pct(ci[0], signed=True)}, {_pct(ci[1], signed=True)}]")
            else:
                aps, gap = f"{_pct(e['AP_roipool'])} | {_pct(e['AP_other'])} | ", _pct(e["gap"], signed=True)
            lines.append(f"| {e['size']} | {e['count']} | {e['shift_px']:.1f} | {100 * e['lost']:.0f}% | "
                         f"{100 * e['added']:.0f}% | {aps}{gap} |")
    atomic_write_text(output_dir / "quantization_vs_ap.md", "\n".join(lines) + "\n")
    report("\n".join(lines))


def report_seeds(runs: list[dict], output_dir: Path) -> None:
    """Checkpoints that differ only in their seed: mean +/- std, and poolers compared pair by pair."""
    groups = seed_groups(runs, metrics=SEED_METRICS)
    if not groups:
        return
    pairs = pooler_pairs(runs, groups, metrics=SEED_METRICS)
    atomic_write_json(output_dir / "seeds.json", json_safe({"groups": groups, "pairs": pairs}))
    plot_seed_groups({g["label"]: [runs[m]["analysis"] for m in g["members"]] for g in groups}, output_dir / "plots")
    lines = ["over seeds (mean +/- std in %, sample std):"]
    for g in groups:
        lines.append(f"  {g['label']:<30} seeds {g['seeds']}  " + "  ".join(
            f"{m} {100 * g[m]['mean']:.1f} +/- {100 * g[m]['std']:.1f}" for m in ("AP", "AP50", "AP75", "APs")))
    for pair in pairs:
        lines.append(f"  {pair['b']} - {pair['a']}, paired by seed {pair['seeds']} (95 % bootstrap interval of the mean):")
        for m in ("AP", "AP50", "AP75", "APs"):
            if m in pair:
                r = pair[m]
                lines.append(f"    {m:<5} {100 * r['mean_diff']:+.1f} [{100 * r['ci95_low']:+.1f}, {100 * r['ci95_high']:+.1f}]"
                             f"  std {100 * r['std_diff']:.1f}  t {r['t']:.2f}")
    report("\n".join(lines))


def _voc_ious(value: Any) -> tuple[float, ...]:
    """``voc_iou``: IoU thresholds in (0, 1) for the VOC columns."""
    values = list(value) if isinstance(value, (list, ListConfig)) else [value]
    if not values or not all(_is_number(v) and 0.0 < float(v) < 1.0 for v in values):
        raise ConfigError(f"voc_iou must be a list of IoU thresholds between 0 and 1 (e.g. [0.5,0.75]), got {value!r}")
    return tuple(float(v) for v in values)


def _check_id_shift(results: list, images: Any, source: str, dataset_source: str) -> None:
    """Refuse integer image ids that fit the dataset only when shifted by one (a 0- vs 1-based export).

    An id that is not the dataset's is an error anyway; this names the likely cause when every such
    id, and every other integer id of the file, lands on a dataset id once shifted by +1 or -1.
    """
    ids = {r["image_id"] for r in results if isinstance(r, dict) and _is_number(r.get("image_id"))
           and float(r["image_id"]).is_integer()}
    unknown = {i for i in ids if int(i) not in images}
    if not unknown:
        return
    for shift in (1, -1):
        if all(int(i) + shift in images for i in ids):
            raise DatasetError(
                f"{source}: its integer image ids look shifted by one from {dataset_source}'s: {len(unknown)} of "
                f"{len(ids)} are not ids of the dataset, and all of them are after adding {shift:+d} (an export "
                f"numbered from {0 if shift == 1 else 1} for a dataset numbered from "
                f"{1 if shift == 1 else 0}?); fix the ids, or write file names as image_id"
            )


def _resolve(value: Any, ids: Any, by_name: dict[str, int], where: str, what: str) -> int:
    """The dataset's id for ``value``: itself when it is one, else the id of that name."""
    if isinstance(value, int) and value in ids:
        return value
    if str(value) not in by_name:
        raise DatasetError(f"{where} {value!r}, which is neither {what}")
    return by_name[str(value)]


def _as_list(value: Any, key: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, ListConfig)):
        raise ConfigError(f"{key} must be a list of files, got {value!r}")
    return list(value)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@run_cli
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="eval", config_name="eval", doc=__doc__)


if __name__ == "__main__":
    run()
