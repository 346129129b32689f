"""Plots of the pooler comparison (matplotlib, PNG), one chart per question.

Shape shorthand:
    M: models compared (one line or bar group each)

Each function takes ``{label: analysis}`` with the dicts of :func:`detector.evaluation.analysis.analyze`
and writes one PNG; :func:`plot_all` writes them all into a folder and returns their paths.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (CI, servers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ap_vs_iou(analyses: dict[str, dict[str, Any]], path: Path) -> Path:
    """AP against the IoU threshold: quantization error shows as a steeper fall at high IoU."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, a in analyses.items():
        ax.plot(a["iou_thresholds"], a["ap_per_iou"], marker="o", label=label)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (COCO, 101-point)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title("AP against the IoU threshold")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        # Undefined AP (no ground truth of that kind) draws no bar rather than a misleading 0.
        ax.bar(x + i * width - 0.4 + width / 2, [np.nan if v is None else v for v in values], width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center")
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def plot_per_class_ap(analyses: dict[str, dict[str, Any]], path: Path) -> Path:
    classes = list(next(iter(analyses.values()))["per_class"])
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(classes)), 4.5))
    _grouped_bars(ax, classes, {label: [a["per_class"][c]["AP"] for c in classes] for label, a in analyses.items()})
    ax.set_ylabel("AP@[.50:.95]")
    ax.set_title("AP per class")
    return _save(fig, path)


def plot_ap_by_size(analyses: dict[str, dict[str, Any]], path: Path) -> Path:
    sizes = ["small", "medium", "large"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _grouped_bars(ax, ["small (< 32²)", "medium", "large (> 96²)"],
                  {label: [a["ap_by_size"][s] for s in sizes] for label, a in analyses.items()})
    ax.set_ylabel("AP@[.50:.95]")
    ax.set_title("AP by object size (COCO area ranges)")
    return _save(fig, path)


def plot_pr_curves(analyses: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, iou in zip(axes, ("0.50", "0.75")):
        for label, a in analyses.items():
            curve = a["pr_curves"][iou]
            precision = [np.nan if v is None else v for v in curve["precision"]]
            ax.plot(curve["recall"], precision, label=label)
        ax.set_title(f"precision / recall at IoU {iou} (mean over classes)")
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("precision")
    axes[0].legend(fontsize=8)
    return _save(fig, path)


def plot_tp_iou_histogram(analyses: dict[str, dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = np.linspace(0.5, 1.0, 26)
    for label, a in analyses.items():
        ax.hist(a["tp_ious"], bins=bins, histtype="step", linewidth=2,
                label=f"{label} (mean {a['mean_tp_iou']:.3f})")
    ax.set_xlabel("IoU of true positives at IoU 0.5")
    ax.set_ylabel("detections")
    ax.set_title("How tight are the boxes that count?")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_all(analyses: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    folder = Path(folder)
    return [
        plot_ap_vs_iou(analyses, folder / "ap_vs_iou.png"),
        plot_per_class_ap(analyses, folder / "per_class_ap.png"),
        plot_pr_curves(analyses, folder / "pr_curves.png"),
        plot_tp_iou_histogram(analyses, folder / "tp_iou_histogram.png"),
        plot_ap_by_size(analyses, folder / "ap_by_size.png"),
    ]


def _mean_std(curves: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """Per position over the runs: mean and sample std (ddof 1), NaN where a run has no value."""
    a = np.array([[np.nan if v is None else v for v in c] for c in curves], dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a position no run has: NaN, drawn as nothing
        return np.nanmean(a, axis=0), (np.nanstd(a, axis=0, ddof=1) if len(curves) > 1 else np.zeros(a.shape[1]))


def plot_seed_groups(groups: dict[str, list[dict[str, Any]]], folder: Path) -> list[Path]:
    """``{label: [analysis of each seed]}``: AP against IoU and AP by size, mean with +/- 1 std error bars."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, analyses in groups.items():
        mean, std = _mean_std([a["ap_per_iou"] for a in analyses])
        ax.errorbar(analyses[0]["iou_thresholds"], mean, yerr=std, marker="o", capsize=3, label=f"{label} (n={len(analyses)})")
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("AP (COCO, 101-point), mean +/- std over seeds")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.set_title("AP against the IoU threshold, over seeds")
    ax.legend(fontsize=8)
    paths = [_save(fig, folder / "seeds_ap_vs_iou.png")]

    sizes = ["small", "medium", "large"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(sizes))
    for i, (label, analyses) in enumerate(groups.items()):
        mean, std = _mean_std([[a["ap_by_size"][s] for s in sizes] for a in analyses])
        ax.bar(x + i * width - 0.4 + width / 2, mean, width, yerr=std, capsize=3, label=f"{label} (n={len(analyses)})")
    ax.set_xticks(x)
    ax.set_xticklabels(["small (< 32²)", "medium", "large (> 96²)"])
    ax.set_ylim(0, 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_ylabel("AP@[.50:.95], mean +/- std over seeds")
    ax.set_title("AP by object size, over seeds")
    ax.legend(fontsize=8)
    paths.append(_save(fig, folder / "seeds_ap_by_size.png"))
    return paths
