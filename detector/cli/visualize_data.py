"""Draw what training will see: N (augmented) samples with their boxes and class names, as PNG.

    python tools/visualize_data.py dataset=yolo dataset.data=data.yaml num_images=16
    python tools/visualize_data.py dataset=voc dataset.root=VOCdevkit augmentation=strong

Check your labels before you spend hours training on them: boxes in the wrong place (pixels vs.
normalised, 0- vs 1-based, EXIF-rotated photos), missing classes, or an augmentation that cuts
objects. Each ``OUT/<i>_<file>.png`` shows one sample of the chosen split after the dataset's box
rule and, for ``split=train``, after ``augmentation``; the legend line lists the boxes per class.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image

from detector.cli.config import (
    CONFIG_DIR,
    instantiate_or_explain,
    run_cli,
    run_directory,
)
from detector.cli.help import run_command
from detector.errors import ConfigError, DatasetError
from detector.evaluation.visualize import draw_detections


def visualize(cfg: DictConfig) -> list[Path]:
    split = str(cfg.split)
    if split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {split!r}")
    count = int(cfg.num_images)
    if count < 1:
        raise ConfigError(f"num_images must be >= 1, got {count}")
    kwargs = {}
    if split == "train":
        kwargs["transforms"] = instantiate_or_explain(cfg.augmentation, what="augmentation")
        kwargs["transforms"].set_random_seed(int(cfg.seed))
    dataset = instantiate_or_explain(cfg.dataset[split], what=f"dataset.{split}", **kwargs)
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.source}: the {split} split has no images")
    output_dir = run_directory(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(cfg.seed)))[:count]
    no_detections = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    written, per_class = [], Counter()
    for i, idx in enumerate(order.tolist()):
        image, target = dataset[idx]
        canvas = draw_detections(image, target, no_detections, dataset.class_names)
        name = Path(str(dataset.coco.imgs[target["image_id"]]["file_name"])).stem
        path = output_dir / f"{i:03d}_{name}.png"
        Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(path)
        written.append(path)
        per_class.update(dataset.class_names[int(k) - 1] for k in target["labels"])
    print(f"{len(written)} {split} samples of {dataset.source} ({len(dataset)} images, {dataset.num_classes} classes)")
    print("boxes drawn per class: " + (", ".join(f"{n} {per_class[n]}" for n in dataset.class_names) or "none"))
    print(f"output: {output_dir}")
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="visualize_data")
@run_cli
def main(cfg: DictConfig) -> None:
    visualize(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="visualize-data", config_name="visualize_data", doc=__doc__)


if __name__ == "__main__":
    run()
