"""The seed's error on your data: what RoIPool's quantization does to every ground-truth box.

    python tools/analyze_quantization.py                                   # embedded val split, stride 32
    python tools/analyze_quantization.py dataset=voc dataset.root=VOCdevkit model.backbone.stride=16

Each box of the split is resized as the model resizes its image (``model.transform``), then
quantized at ``model.backbone.stride`` with ``model.pooler.output_size`` bins under the ``round`` and
the seed's ``floor`` rule (``detector/evaluation/quantization.py``). Printed and written to
``OUT/quantization.md`` / ``.json``: per rule and object size (COCO small / medium / large), the origin
shift in (resized) pixels, the fraction of the box cut away and the fraction of the pooled region
that lies outside the box (mean, median, 90th percentile); ``OUT/quantization_hist.png`` shows the
distributions. RoIAlign reads the box itself: for it all three are zero.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from detector.cli.config import (
    CONFIG_DIR,
    instantiate_or_explain,
    report,
    run_cli,
    run_directory,
)
from detector.cli.help import run_command
from detector.errors import ConfigError, DatasetError
from detector.evaluation.quantization import (
    RULES,
    quantize_boxes,
    resized_gt_boxes,
    summarize,
)
from detector.utils.io import atomic_write_json, atomic_write_text

SIZES = ("small", "medium", "large", "all")
MEASURES = (("shift_px", "origin shift (px)"), ("lost", "box cut away"), ("added", "region outside the box"))


def resized_boxes(dataset, transform) -> tuple[torch.Tensor, list[str]]:
    """Every counted box in the pixels the backbone sees, and its COCO size bucket (original area)."""
    return resized_gt_boxes(dataset.coco, transform.target_size)


def analyze(cfg: DictConfig) -> dict:
    split = str(cfg.split)
    if split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {split!r}")
    dataset = instantiate_or_explain(cfg.dataset[split], what=f"dataset.{split}")
    transform = instantiate_or_explain(cfg.model.transform, what="model.transform").eval()  # test-time size
    stride, k = int(cfg.model.backbone.stride), int(cfg.model.pooler.output_size)
    boxes, buckets = resized_boxes(dataset, transform)
    if len(boxes) == 0:
        raise DatasetError(f"{dataset.source}: the {split} split has no boxes to analyse")
    output_dir = run_directory(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"stride": stride, "output_size": k, "source": dataset.source, "num_boxes": len(boxes), "rules": {}}
    values: dict[str, dict[str, torch.Tensor]] = {}
    for rule in RULES:
        q = quantize_boxes(boxes, stride=stride, output_size=k, rule=rule)
        per = {"shift_px": q.shift.norm(dim=1), "lost": q.lost, "added": q.added}
        values[rule] = per
        result["rules"][rule] = {}
        for size in SIZES:
            mask = torch.tensor([size == "all" or b == size for b in buckets])
            result["rules"][rule][size] = {"count": int(mask.sum()), **{m: summarize(v[mask]) for m, v in per.items()}}
    table = format_table(result)
    atomic_write_json(output_dir / "quantization.json", result)
    atomic_write_text(output_dir / "quantization.md", table + "\n")
    plot(values, output_dir / "quantization_hist.png", stride, k)
    report(table)
    report(f"output: {output_dir}")
    return result


def format_table(result: dict) -> str:
    lines = [
        f"RoIPool quantization at stride {result['stride']}, {result['output_size']}x{result['output_size']} bins, "
        f"{result['num_boxes']} boxes of {result['source']} (mean / median / p90)",
        "",
        "| rule | size | boxes | " + " | ".join(label for _, label in MEASURES) + " |",
        "|---|---|---:|" + "---:|" * len(MEASURES),
    ]
    for rule, sizes in result["rules"].items():
        for size, row in sizes.items():
            cells = []
            for key, _ in MEASURES:
                s = row[key]
                fmt = "{:.1f}" if key == "shift_px" else "{:.0%}"
                cells.append(" / ".join(fmt.format(s[v]) if s[v] == s[v] else "nan" for v in ("mean", "median", "p90")))
            lines.append(f"| {rule} | {size} | {row['count']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(values: dict[str, dict[str, torch.Tensor]], path: Path, stride: int, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4 * len(MEASURES), 3.2))
    for ax, (key, label) in zip(axes, MEASURES):
        for rule in values:
            ax.hist(values[rule][key].numpy(), bins=30, alpha=0.55, label=rule)
        ax.set_title(label)
        ax.set_xlabel("pixels" if key == "shift_px" else "fraction")
    axes[0].legend()
    fig.suptitle(f"RoIPool quantization at stride {stride}, {k}x{k} bins (RoIAlign: all zero)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze_quantization")
@run_cli
def main(cfg: DictConfig) -> None:
    analyze(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="analyze", config_name="analyze_quantization", doc=__doc__)


if __name__ == "__main__":
    run()
