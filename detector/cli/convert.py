"""Convert a dataset between COCO JSON, YOLO and Pascal VOC (each to each).

    python tools/convert_dataset.py dataset=voc dataset.root=VOCdevkit to=coco output=out/voc_coco
    python tools/convert_dataset.py dataset=yolo dataset.data=data.yaml to=voc output=out/yolo_voc
    python tools/convert_dataset.py dataset=coco_json dataset.train.images=... to=yolo output=out/y
    python tools/convert_dataset.py dataset=synthetic to=yolo output=out/s rename='{cross: plus}' drop='[ring]'

The input is any dataset config (``configs/dataset/``), read through the same loader as training, so
what is written is exactly the ground truth training and evaluation use (boxes clipped, unusable ones
dropped, with the loader's one warning). The layouts written are described in
``detector/data/writers.py``; the result loads back with ``dataset=coco_json|yolo|voc``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from detector.cli.config import CONFIG_DIR, instantiate_or_explain, run_cli
from detector.cli.help import run_command
from detector.data import DetectionDataset
from detector.data.writers import write_coco, write_voc, write_yolo
from detector.errors import ConfigError

FORMATS = ("coco", "yolo", "voc")


def relabel(dataset: DetectionDataset, rename: dict, drop: list) -> DetectionDataset:
    """The dataset with classes renamed (two names onto one merges them) and some dropped."""
    names = set(dataset.class_names)
    unknown = sorted({str(k) for k in rename} - names) + sorted({str(d) for d in drop} - names)
    if unknown:
        raise ConfigError(f"rename/drop name {unknown[0]!r}, which is not a class of {dataset.source} "
                          f"({', '.join(dataset.class_names)})")
    new_name = {c["id"]: str(rename.get(c["name"], c["name"])) for c in dataset.coco.dataset["categories"]
                if c["name"] not in set(map(str, drop))}
    final = list(dict.fromkeys(new_name[c] for c in sorted(new_name)))  # first id of each name keeps it
    cat_of = {name: i + 1 for i, name in enumerate(final)}
    coco = {
        "images": dataset.coco.dataset["images"],
        "annotations": [{**a, "category_id": cat_of[new_name[a["category_id"]]]}
                        for a in dataset.coco.dataset["annotations"] if a["category_id"] in new_name],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(final)],
    }
    return DetectionDataset(coco_dict=coco, images_dir=dataset.images_dir, source=dataset.source, check_files=False)


def convert(cfg: DictConfig) -> dict[str, Path]:
    fmt = str(cfg.to)
    if fmt not in FORMATS:
        raise ConfigError(f"to must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(str(cfg.output))
    # Never write into an existing dataset: the folder this conversion fills must be new or empty
    # (for VOC, the VOC<year> folder: another year may sit beside it in the devkit). Checked, and
    # every split read, before anything is written.
    target = out / f"VOC{cfg.voc_year}" if fmt == "voc" else out
    if target.exists() and (not target.is_dir() or any(p.name != "convert.log" for p in target.iterdir())):
        raise ConfigError(f"output={out}: {target} already holds files; convert into a new or empty folder")
    datasets: dict[str, DetectionDataset] = {}
    for split in cfg.splits:
        split = str(split)
        if split not in cfg.dataset:
            raise ConfigError(f"splits: the dataset has no {split!r} split (it has train and val)")
        dataset = instantiate_or_explain(cfg.dataset[split], what=f"dataset.{split}")
        if cfg.rename or cfg.drop:
            dataset = relabel(dataset, dict(cfg.rename or {}), list(cfg.drop or []))
        datasets[split] = dataset
    written: dict[str, Path] = {}
    voc_names: set[str] = set()  # VOC: one JPEGImages/ for every split, so names are unique across them
    for split, dataset in datasets.items():
        if fmt == "coco":
            written[split] = write_coco(dataset, out, split, link=bool(cfg.link_images))
            note = ""
        elif fmt == "yolo":
            written[split], left_out = write_yolo(dataset, out, split, link=bool(cfg.link_images))
            note = f"; {left_out} crowd/ignore/difficult boxes left out (YOLO has no such flag)" if left_out else ""
        else:
            written[split] = write_voc(dataset, out, split, year=str(cfg.voc_year), taken=voc_names)
            note = ""
        print(f"{split}: {len(dataset)} images, {len(dataset.coco.getAnnIds())} boxes, "
              f"{dataset.num_classes} classes -> {written[split]}{note}")
    hint = {"coco": "dataset=coco_json dataset.train.images=OUT/train/images dataset.train.annotations=OUT/train/annotations.json ...",
            "yolo": f"dataset=yolo dataset.data={out / 'data.yaml'}",
            "voc": f"dataset=voc dataset.root={out} dataset.class_names=from_xml "
                   f"dataset.train.sets=[{cfg.voc_year}/train] dataset.val.sets=[{cfg.voc_year}/val]"}[fmt]
    print(f"train on it with: python tools/train.py {hint}")
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="convert")
@run_cli
def main(cfg: DictConfig) -> None:
    convert(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="convert", config_name="convert", doc=__doc__)


if __name__ == "__main__":
    run()
