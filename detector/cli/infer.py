"""Run a trained detector on photos: draw the boxes, write one JSON of detections, print images/s.

    python tools/infer.py checkpoint=outputs/train/RUN/model_final.pth input=photos/ output_dir=OUT
    python tools/infer.py checkpoint=A.pth input='photos/*.jpg' score_thresh=0.3 device=cpu
    python tools/infer.py checkpoint=model_final.onnx input=photos/   (tools/export.py; onnxruntime)

``input`` is an image file, a folder (its images, sorted; not its sub-folders) or a glob. No training
dataset is needed: the class names come from the checkpoint. Images are read as a photo viewer
shows them (EXIF orientation applied; grayscale, RGBA, palette and 16-bit images converted), so
the boxes land on the upright picture. ``OUT/<name>`` is each image with its detections drawn (as
PNG when the source is not a JPEG), ``OUT/detections.json`` lists per image ``file``, ``width``,
``height`` and ``detections`` (``box`` xyxy in pixels, ``label``, ``class_name``, ``score``).
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from detector.cli.config import (
    CONFIG_DIR,
    checkpoint_amp_dtype,
    check_output_dir_writable,
    model_from_checkpoint,
    report,
    run_cli,
    run_directory,
)
from detector.cli.help import run_command
from detector.data.image_io import IMAGE_SUFFIXES, read_rgb
from detector.engine import load_checkpoint
from detector.export import FORMATS
from detector.exported import ExportedPredictor
from detector.errors import ConfigError, DatasetError
from detector.evaluation.visualize import draw_detections
from detector.utils.env import resolve_device
from detector.utils.io import atomic_write_json


EXPORTED = set(FORMATS.values())  # .onnx, .pt2


def find_images(spec: str) -> list[Path]:
    """The images named by ``input``: a file, a folder's images, or a glob's matches (sorted)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DatasetError(f"{path}: no images in this folder (suffixes {', '.join(IMAGE_SUFFIXES)})")
        return images
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    images = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DatasetError(f"input={spec}: no such file or folder, and no image matches it as a glob")
    return images


def output_names(images: list[Path]) -> list[str]:
    """One output file name per image, unique even when two folders hold an ``a.jpg``."""
    names, seen = [], set()
    for i, path in enumerate(images):
        suffix = path.suffix.lower() if path.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
        name = path.stem + suffix
        if name in seen:
            name = f"{path.stem}_{i}{suffix}"
        seen.add(name)
        names.append(name)
    return names


def refuse_overwriting_inputs(images: list[Path], output_dir: Path) -> None:
    """Never write over a user's photo: refuse (before writing) an output that lands on an input."""
    inputs = {p.resolve() for p in images}
    for name in [*output_names(images), "detections.json"]:
        target = (output_dir / name).resolve()
        if target in inputs:
            raise ConfigError(
                f"output_dir={output_dir} would overwrite the input image {output_dir / name}; choose another "
                f"output_dir (the drawn copies are written there under the inputs' names)"
            )


@torch.no_grad()
def infer(cfg: DictConfig) -> list[dict]:
    score_thresh = float(cfg.score_thresh)
    if not 0.0 <= score_thresh <= 1.0:
        raise ConfigError(f"score_thresh must be in [0, 1], got {score_thresh}")
    batch_size = int(cfg.batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    images = find_images(str(cfg.input))
    output_dir = run_directory(cfg)
    refuse_overwriting_inputs(images, output_dir)
    check_output_dir_writable(output_dir)
    if Path(str(cfg.checkpoint)).suffix in EXPORTED:  # an exported program: onnxruntime or torch.export, on the CPU
        if cfg.get("amp") not in (None, "off", False):
            raise ConfigError(f"amp={cfg.amp} applies to checkpoints; {cfg.checkpoint} runs in the precision it was "
                              f"exported in (leave amp unset)")
        if cfg.get("test_scale") is not None:
            raise ConfigError(f"test_scale applies to checkpoints; {cfg.checkpoint} resizes as it was exported "
                              f"(leave test_scale unset, or export again from a checkpoint)")
        exported, device = ExportedPredictor(str(cfg.checkpoint)), torch.device("cpu")
        class_names = exported.class_names

        def model(tensors):
            return [exported.run(t, name=str(p)) for t, p in zip(tensors, chunk)]
    else:
        device = resolve_device(cfg.device)
        path = Path(str(cfg.checkpoint))
        trusted = [str(t) for t in (cfg.get("trusted_targets") or [])]
        state = load_checkpoint(path)
        net, class_names = model_from_checkpoint(  # test_scale null: the checkpoint's own
            path, state, device, trusted_targets=trusted, test_scale=cfg.get("test_scale"))
        amp = checkpoint_amp_dtype(cfg.get("amp"), state.get("config") or {}, device)

        def model(tensors):  # in the precision of training's rule (amp=auto: bf16 where it is fast)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                return net(tensors)

    records, names = [], output_names(images)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    started, seen = time.perf_counter(), 0
    with tqdm(total=len(images), unit="img", disable=not bool(cfg.progress)) as bar:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            tensors = [torch.from_numpy(read_rgb(p).transpose(2, 0, 1).copy()).float().div_(255.0) for p in chunk]
            outputs = model([t.to(device) for t in tensors])
            for k, (image_path, image, out) in enumerate(zip(chunk, tensors, outputs)):
                out = {key: (value.cpu().float() if value.is_floating_point() else value.cpu()) for key, value in out.items()}
                keep = out["scores"] >= score_thresh
                canvas = draw_detections(image, empty, out, class_names, score_thresh=score_thresh)
                Image.fromarray(canvas.permute(1, 2, 0).numpy()).save(output_dir / names[start + k])
                records.append({
                    "file": str(image_path), "output": names[start + k],
                    "width": int(image.shape[2]), "height": int(image.shape[1]),
                    "detections": [
                        {"box": [round(float(v), 2) for v in box], "label": int(label),
                         "class_name": class_names[int(label) - 1], "score": round(float(score), 4)}
                        for box, label, score in zip(out["boxes"][keep], out["labels"][keep], out["scores"][keep])
                    ],
                })
            seen += len(chunk)
            bar.update(len(chunk))
    seconds = time.perf_counter() - started
    atomic_write_json(output_dir / "detections.json", records)
    total = sum(len(r["detections"]) for r in records)
    report(f"{seen} images, {total} detections (score >= {score_thresh}) in {seconds:.1f} s: "
           f"{seen / max(seconds, 1e-9):.1f} images/s on {device} (reading, inference, drawing)")
    report(f"output: {output_dir}")
    return records


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="infer")
@run_cli
def main(cfg: DictConfig) -> None:
    infer(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="infer", config_name="infer", doc=__doc__)


if __name__ == "__main__":
    run()
