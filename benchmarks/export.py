"""An exported checkpoint against the eager model: COCO AP on a val split, and inference images/s.

    python -m benchmarks.export --checkpoint outputs/train/RUN/model_final.pth [--threads 2] [--rounds 3]

From the checkout root, with no other torch process on the machine (the images/s are timed). Exports
the checkpoint twice (torch.export ``.pt2`` and ONNX, any image size) next to ``--out``, then runs the
stored val split (the checkpoint's own ``dataset.val``) through the eager model in float32, eager in
bfloat16 autocast (only where the CPU has bf16 instructions: ``detector.engine`` decides as
``solver.amp=auto``, :func:`detector.engine.step.resolve_amp`), the torch.export program and the ONNX file in onnxruntime, one image at a
time (the programs' signature). Scored by the project's COCO evaluator (pycocotools). The timing
alternates the variants image by image over ``--rounds`` passes, so all see the same machine state;
the table gives each one's images/s and its ratio to eager float32, plus AP, AP50 and the largest
AP difference from eager.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import detector.cli  # noqa: F401 -- before torch: OpenMP's spin as the commands set it (detector/cli/openmp.py)
import torch

from detector.cli.config import build_split, model_from_checkpoint
from detector.engine import load_checkpoint
from detector.engine.step import resolve_amp
from detector.evaluation.coco_evaluator import COCOEvaluator
from detector.export import export_detector
from detector.exported import ExportedPredictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="benchmarks/results/export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint)
    state = load_checkpoint(checkpoint)
    model, class_names = model_from_checkpoint(checkpoint, state, "cpu")
    model.eval()
    dataset = build_split(state["config"]["dataset"]["val"], what="config.dataset.val", from_file=checkpoint)

    started = time.perf_counter()
    programs = {}
    for fmt, suffix in (("torch_export", ".pt2"), ("onnx", ".onnx")):
        t = time.perf_counter()
        path = export_detector(model, out / f"model{suffix}", format=fmt, class_names=class_names, example_size=(320, 320))
        programs[fmt] = (ExportedPredictor(path), time.perf_counter() - t)
    print(f"exported in {time.perf_counter() - started:.0f} s "
          + ", ".join(f"{k} {s:.0f} s" for k, (_, s) in programs.items()), flush=True)

    bf16 = resolve_amp("auto", torch.device("cpu")).dtype == torch.bfloat16

    def eager(image, dtype=None):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            (o,) = model([image])
        return o

    variants = {"eager float32": eager}
    if bf16:
        variants["eager bf16 autocast"] = lambda image: eager(image, torch.bfloat16)
    variants["torch.export program"] = programs["torch_export"][0].run
    variants["onnxruntime"] = programs["onnx"][0].run

    images = [(dataset[i][0], dataset[i][1]) for i in range(len(dataset))]
    seconds = {k: 0.0 for k in variants}
    evaluators = {k: COCOEvaluator(coco_gt=dataset.coco, label_to_cat_id=dataset.label_to_cat_id) for k in variants}
    for k in variants:  # warm-up
        variants[k](images[0][0])
    for r in range(args.rounds):
        for image, target in images:
            for k, run in variants.items():
                t = time.perf_counter()
                o = run(image)
                seconds[k] += time.perf_counter() - t
                if r == 0:
                    evaluators[k].process([target], [o])
    metrics = {k: e.evaluate() for k, e in evaluators.items()}
    base = seconds["eager float32"]
    n = len(images) * args.rounds
    rows = ["| variant | images/s | x eager fp32 | AP | AP50 | AP - eager AP |", "| --- | --- | --- | --- | --- | --- |"]
    for k in variants:
        m = metrics[k]
        rows.append(f"| {k} | {n / seconds[k]:.2f} | {base / seconds[k]:.2f} | {m['AP']:.4f} | {m['AP50']:.4f} | "
                    f"{m['AP'] - metrics['eager float32']['AP']:+.4f} |")
    table = "\n".join(rows)
    header = (f"{checkpoint}: {len(images)} val images x {args.rounds} rounds, one image per call, "
              f"{args.threads} threads; bf16 {'run' if bf16 else 'not run (no bf16 instructions on this CPU)'}")
    print(header + "\n\n" + table)
    (out / "export.md").write_text(header + "\n\n" + table + "\n")
    (out / "export.json").write_text(json.dumps({"metrics": metrics, "seconds": seconds, "images": n}, indent=2, default=float))


if __name__ == "__main__":
    main()
