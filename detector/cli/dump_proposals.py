"""Write a split's proposals to a file (for Fast R-CNN) and measure their recall.

    python tools/dump_proposals.py checkpoint=outputs/train/RUN/model_final.pth split=train output=props_train.pt
    python tools/dump_proposals.py checkpoint=A.pth split=val output=props_val.pt dataset=voc dataset.root=...
    python tools/dump_proposals.py method=selective_search dataset=synthetic split=val output=ss_val.pt num_workers=2
    python tools/dump_proposals.py convert=detectron2_proposals.pkl output=props.pt   # a pickle you trust

``method=selective_search`` needs no checkpoint (``pip install -e ".[proposals]"``): classic
proposals as in the Fast R-CNN paper, one image per worker process, with the seconds per image.

Runs the RPN of the checkpoint (the whole image pipeline of the model: resize, backbone, RPN; no
augmentation), keeps ``num_proposals`` per image with their objectness, maps them back to the
original image pixels and writes them in the format of ``detector/data/proposals.py``, keyed by the
dataset's image ids. Beside the file, ``<output>.recall.json`` holds (and the tool prints) the
recall of the split's ground truth at IoU 0.5 and 0.7 for 100, 300 and 1000 proposals per image and
the average recall AR@100, AR@1000 over IoU 0.50:0.95 (``detector/evaluation/proposal_recall.py``).
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from detector.cli.config import CONFIG_DIR, build_split, model_from_checkpoint, run_cli
from detector.cli.help import run_command
from detector.data import build_detection_loader
from detector.data.image_io import read_rgb
from detector.data.proposals import from_detectron2, save_proposals
from detector.data.selective_search import selective_search
from detector.engine import load_checkpoint
from detector.errors import CheckpointError, ConfigError
from detector.evaluation.proposal_recall import counted_ground_truth, proposal_recall
from detector.utils.env import resolve_device
from detector.utils.io import atomic_write_json


def _search_one(job: tuple[str, str]) -> tuple[torch.Tensor, float]:
    """One image's selective search (a worker process): (boxes [P, 4], seconds)."""
    path, mode = job
    started = time.perf_counter()
    boxes = selective_search(read_rgb(path), mode=mode)
    return boxes, time.perf_counter() - started


def dump_selective_search(cfg: DictConfig, split: str) -> dict[str, float]:
    """``method=selective_search``: classic proposals for every image of a split, in parallel."""
    if cfg.get("dataset") is None:
        raise ConfigError("method=selective_search needs dataset=... (there is no checkpoint to take it from)")
    dataset = build_split(cfg.dataset[split], what=f"dataset.{split}", proposals=None)
    jobs = [(str(dataset.image_path(i)), str(cfg.selective_search_mode)) for i in dataset.ids]
    selective_search(np.zeros((8, 8, 3), dtype=np.uint8), mode=str(cfg.selective_search_mode))  # fail early
    workers = max(1, int(cfg.num_workers))
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = list(tqdm(pool.imap(_search_one, jobs), total=len(jobs), desc="selective search",
                            disable=not bool(cfg.progress)))
    wall = time.perf_counter() - started
    proposals = {i: (boxes[: int(cfg.num_proposals)], None) for i, (boxes, _) in zip(dataset.ids, results)}
    per_image = sum(seconds for _, seconds in results) / max(len(results), 1)
    return _write(cfg, dataset, proposals, {
        "method": "selective_search", "mode": str(cfg.selective_search_mode), "seconds_per_image": per_image,
        "wall_seconds": wall, "workers": workers,
    })


def _write(cfg: DictConfig, dataset, proposals: dict, info: dict) -> dict[str, float]:
    out = save_proposals(Path(str(cfg.output)), proposals)
    recall = proposal_recall({i: b for i, (b, _) in proposals.items()}, counted_ground_truth(dataset))
    atomic_write_json(out.with_name(out.name + ".recall.json"), {**info, "split": str(cfg.split), **recall})
    print(f"{len(proposals)} images, {recall['mean_proposals']:.0f} proposals per image -> {out}")
    if "seconds_per_image" in info:
        print(f"{info['seconds_per_image']:.2f} s per image ({info['workers']} worker processes, "
              f"{info['wall_seconds']:.0f} s wall)")
    print("  ".join(f"{k}={v:.3f}" for k, v in recall.items() if k.startswith(("recall", "AR"))))
    return recall


@torch.no_grad()
def dump(cfg: DictConfig) -> dict[str, float]:
    split = str(cfg.split)
    if split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {split!r}")
    if int(cfg.num_proposals) < 1:
        raise ConfigError(f"num_proposals must be >= 1, got {cfg.num_proposals}")
    method = str(cfg.get("method", "rpn"))
    if method == "selective_search":
        return dump_selective_search(cfg, split)
    if method != "rpn":
        raise ConfigError(f"method must be rpn or selective_search, got {method!r}")
    if cfg.get("checkpoint") is None:
        raise ConfigError("method=rpn needs checkpoint=FILE (a Faster R-CNN checkpoint)")
    path = Path(str(cfg.checkpoint))
    state = load_checkpoint(path)
    device = resolve_device(cfg.device)
    trusted = [str(t) for t in (cfg.get("trusted_targets") or [])]
    model, class_names = model_from_checkpoint(path, state, device, trusted_targets=trusted)
    if model.rpn is None:
        raise CheckpointError(f"{path} is a Fast R-CNN (no RPN): it has no proposals to dump; use a Faster R-CNN checkpoint")
    model.rpn.post_nms_topk = {False: int(cfg.num_proposals), True: int(cfg.num_proposals)}
    model.rpn.pre_nms_topk = {k: max(v, int(cfg.num_proposals)) for k, v in model.rpn.pre_nms_topk.items()}
    own = cfg.get("dataset") is not None
    node = cfg.dataset[split] if own else (state["config"].get("dataset") or {}).get(split)
    dataset = build_split(
        node, what=f"dataset.{split}" if own else f"config.dataset.{split}", from_file=None if own else path,
        trusted_targets=trusted, **({"proposals": None} if isinstance(node, dict) and "proposals" in node else {}),
    )
    if list(dataset.class_names) != class_names:
        raise CheckpointError(f"{path} was trained on classes {class_names} but {dataset.source} has {list(dataset.class_names)}")
    loader = build_detection_loader(dataset, batch_size=int(cfg.batch_size), shuffle=False, num_workers=int(cfg.num_workers))

    proposals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for images, targets in tqdm(loader, desc="proposals", unit="batch", disable=not bool(cfg.progress)):
        images = [image.to(device) for image in images]
        original = [tuple(image.shape[-2:]) for image in images]
        image_list, _ = model.transform(images)
        features = model.backbone(image_list.tensors)
        boxes, scores = model.rpn.propose(features, image_list.image_sizes)
        for target, b, s, (h, w), (oh, ow) in zip(targets, boxes, scores, image_list.image_sizes, original):
            scale = b.new_tensor([ow / w, oh / h, ow / w, oh / h])
            proposals[int(target["image_id"])] = ((b * scale).cpu(), s.cpu())

    return _write(cfg, dataset, proposals, {"method": "rpn", "checkpoint": str(path)})


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="dump_proposals")
@run_cli
def main(cfg: DictConfig) -> None:
    if cfg.get("convert"):  # detectron2's precomputed proposals -> this format
        out = from_detectron2(str(cfg.convert), str(cfg.output))
        print(f"converted {cfg.convert} -> {out}")
        return
    dump(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="dump-proposals", config_name="dump_proposals", doc=__doc__)


if __name__ == "__main__":
    run()
