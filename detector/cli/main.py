"""``roilens <command> [hydra overrides...]``: the one console command of the installed package.

    roilens train solver.max_iter=2000 model/pooler=roi_pool
    roilens eval checkpoints='[outputs/pool/model_final.pth,outputs/align/model_final.pth]'
    roilens infer checkpoint=model_final.pth input=photos/ output_dir=drawn

Each command is a module of :mod:`detector.cli`; this file only dispatches to it, so the module's
own Hydra app (and its ``--help``) sees the arguments after the command name. Written by hand:
a table of names is all argparse sub-commands would add, and Hydra must receive the raw argv.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module of detector.cli, one line for the overview)
COMMANDS = {
    "train": ("train", "train a Faster R-CNN (or Fast R-CNN on proposal files) from the configs"),
    "eval": ("eval", "evaluate checkpoints or results files side by side (COCO and VOC metrics, plots)"),
    "infer": ("infer", "run a checkpoint on images: drawn copies and a detections JSON"),
    "export": ("export", "export a checkpoint as ONNX or a torch.export program (runs without this package)"),
    "convert": ("convert", "convert a dataset between COCO json, Pascal VOC and YOLO"),
    "dump-proposals": ("dump_proposals", "write proposal files for Fast R-CNN (an RPN or selective search)"),
    "analyze": ("analyze", "measure RoIPool's quantization on a dataset's boxes"),
    "visualize-data": ("visualize_data", "draw a dataset's images with their boxes after augmentation"),
    "visualize-roi": ("visualize_roi", "draw the seed's RoIPool / RoIAlign example"),
    "benchmark": ("benchmark", "time the RoI operators or the training step against torchvision"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: roilens <command> [key=value ...]   (roilens <command> --help for its keys)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.exit(f"error: unknown command {name!r}; one of: {', '.join(COMMANDS)}")
    module = importlib.import_module(f"detector.cli.{COMMANDS[name][0]}")
    sys.argv = [f"roilens {name}", *rest]  # what the command's Hydra app (or argparse) reads
    module.run()


if __name__ == "__main__":
    main()
