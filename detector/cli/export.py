"""Export a checkpoint as a program that runs without this package: ONNX (onnxruntime) or torch.export.

    python tools/export.py checkpoint=outputs/train/RUN/model_final.pth
    python tools/export.py checkpoint=A.pth format=torch_export output=deploy/model.pt2
    python tools/export.py checkpoint=A.pth dynamic=false image_size=[480,640]

Writes the program and a JSON beside it (class names, the input and output layout, the resize rule,
the score threshold). The infer command runs it (``checkpoint=A.onnx input=photos/``) through
onnxruntime, with the same outputs as for a checkpoint. What makes the model exportable is in :mod:`detector.export`.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from detector.cli.config import CONFIG_DIR, model_from_checkpoint, report, run_cli
from detector.cli.help import run_command
from detector.engine import load_checkpoint
from detector.errors import ConfigError
from detector.export import FORMATS, export_detector


def export(cfg: DictConfig) -> Path:
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    size = tuple(int(v) for v in cfg.image_size)
    if len(size) != 2 or not all(32 <= v <= 4096 for v in size):
        raise ConfigError(f"image_size must be [height, width], each 32..4096, got {list(cfg.image_size)}")
    checkpoint = Path(str(cfg.checkpoint))
    output = Path(str(cfg.output)) if cfg.output else checkpoint.with_suffix(FORMATS[fmt])
    if output.suffix != FORMATS[fmt]:
        raise ConfigError(f"output={output}: a {fmt} program is written to a {FORMATS[fmt]} file")
    if fmt == "onnx":
        try:
            import onnxscript  # noqa: F401  (what torch.onnx's exporter needs)
        except ImportError:
            raise ConfigError('format=onnx needs the deploy extra: pip install -e ".[deploy]"') from None
    trusted = [str(t) for t in (cfg.get("trusted_targets") or [])]
    model, class_names = model_from_checkpoint(checkpoint, load_checkpoint(checkpoint), "cpu", trusted_targets=trusted)
    started = time.perf_counter()
    export_detector(model, output, format=fmt, class_names=class_names, example_size=size,
                    dynamic=bool(cfg.dynamic), opset=int(cfg.opset))
    report(f"wrote {output} and {output.with_suffix('.json').name} ({fmt}, "
           f"{'any image size' if cfg.dynamic else f'{size[0]} x {size[1]} images'}) in {time.perf_counter() - started:.0f} s")
    return output


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@run_cli
def main(cfg: DictConfig) -> None:
    export(cfg)


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    run_command(main, command="export", config_name="export", doc=__doc__)
