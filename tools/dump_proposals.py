"""Write a split's RPN proposals to a file (for Fast R-CNN) and measure their recall.

    python tools/dump_proposals.py checkpoint=outputs/train/RUN/model_final.pth split=train output=props_train.pt
    python tools/dump_proposals.py checkpoint=A.pth split=val output=props_val.pt dataset=voc dataset.root=...

Runs the RPN of the checkpoint (the whole image pipeline of the model: resize, backbone, RPN; no
augmentation), keeps ``num_proposals`` per image with their objectness, maps them back to the
original image pixels and writes them in the format of ``detector/data/proposals.py``, keyed by the
dataset's image ids. Beside the file, ``<output>.recall.json`` holds (and the tool prints) the
recall of the split's ground truth at IoU 0.5 and 0.7 for 100, 300 and 1000 proposals per image and
the average recall AR@100, AR@1000 over IoU 0.50:0.95 (``detector/evaluation/proposal_recall.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from config_utils import build_split, model_from_checkpoint, run_cli
from detector.data import build_detection_loader
from detector.data.proposals import save_proposals
from detector.engine import load_checkpoint
from detector.errors import CheckpointError, ConfigError
from detector.evaluation.proposal_recall import counted_ground_truth, proposal_recall
from detector.utils.env import resolve_device
from detector.utils.io import atomic_write_json


@torch.no_grad()
def dump(cfg: DictConfig) -> dict[str, float]:
    split = str(cfg.split)
    if split not in ("train", "val"):
        raise ConfigError(f"split must be train or val, got {split!r}")
    if int(cfg.num_proposals) < 1:
        raise ConfigError(f"num_proposals must be >= 1, got {cfg.num_proposals}")
    path = Path(str(cfg.checkpoint))
    state = load_checkpoint(path)
    device = resolve_device(cfg.device)
    model, class_names = model_from_checkpoint(path, state, device)
    if model.rpn is None:
        raise CheckpointError(f"{path} is a Fast R-CNN (no RPN): it has no proposals to dump; use a Faster R-CNN checkpoint")
    model.rpn.post_nms_topk = {False: int(cfg.num_proposals), True: int(cfg.num_proposals)}
    model.rpn.pre_nms_topk = {k: max(v, int(cfg.num_proposals)) for k, v in model.rpn.pre_nms_topk.items()}
    node = cfg.dataset[split] if cfg.get("dataset") is not None else state["config"]["dataset"][split]
    dataset = build_split(node, what=f"dataset.{split}", **({"proposals": None} if "proposals" in node else {}))
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

    out = save_proposals(Path(str(cfg.output)), proposals)
    recall = proposal_recall({i: b for i, (b, _) in proposals.items()}, counted_ground_truth(dataset))
    atomic_write_json(out.with_name(out.name + ".recall.json"), {"checkpoint": str(path), "split": split, **recall})
    print(f"{len(proposals)} images, {recall['mean_proposals']:.0f} proposals per image -> {out}")
    print("  ".join(f"{k}={v:.3f}" for k, v in recall.items() if k.startswith(("recall", "AR"))))
    return recall


@hydra.main(version_base="1.3", config_path="../configs", config_name="dump_proposals")
@run_cli
def main(cfg: DictConfig) -> None:
    dump(cfg)


if __name__ == "__main__":
    main()
