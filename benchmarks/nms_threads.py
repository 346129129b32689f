"""Each image's NMS on its own core against one NMS after another, on the default model.

    python -m benchmarks.nms_threads [--rounds 12] [--amp bf16|off]   # from the checkout root

One process, the default config's model (as benchmarks/amp_step.py: 4 images of 256 x 352, two boxes
each): its training step (forward + loss + backward + SGD) and its inference, with
:func:`detector.ops.nms.nms_each` as the RPN and the box head call it (the images side by side, up to
``torch.get_num_threads()``) and with ``threads=1`` (the plain loop). The two alternate within each
round on the same weights and inputs; the table gives the medians and the serial / threaded ratio
paired per round. Both give the same boxes (tests/ops/test_nms.py). Run it with no other torch
process on the machine.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import detector.cli  # noqa: F401 -- before torch: OpenMP's spin as the commands set it (detector/cli/openmp.py)
import torch

import detector.modeling.roi_heads.fast_rcnn as fast_rcnn
import detector.modeling.rpn.rpn as rpn
from benchmarks.amp_step import build_default_model
from detector.engine.step import train_step
from detector.ops.nms import nms_each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--amp", choices=["off", "bf16"], default="bf16")
    args = parser.parse_args()
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(0)
    model = build_default_model(["circle", "square", "triangle", "cross", "ring"]).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 256, 352, generator=g) for _ in range(4)]
    boxes = torch.tensor([[20.0, 30.0, 120.0, 160.0], [150.0, 40.0, 230.0, 200.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "sample_seed": i} for i in range(4)]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)  # the weights barely move between rounds
    variants = {"threads": nms_each, "serial": functools.partial(nms_each, threads=1)}

    def use(name: str) -> None:
        rpn.nms_each = fast_rcnn.nms_each = variants[name]

    def step() -> float:
        start = time.perf_counter()
        train_step(model, images, targets, optimizer, iteration=0, amp_dtype=amp_dtype)
        return time.perf_counter() - start

    def infer() -> float:
        model.eval()
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_dtype is not None):
            model(images)
        model.train()
        return time.perf_counter() - start

    try:
        for name in variants:  # warm-up
            use(name)
            step(), step(), infer()
        times = {kind: {name: [] for name in variants} for kind in ("train step", "inference")}
        for _ in range(args.rounds):
            for name in variants:
                use(name)
                times["train step"][name].append(step())
                times["inference"][name].append(infer())
    finally:
        use("threads")
    print(f"threads={torch.get_num_threads()}  amp={args.amp}  torch {torch.__version__}")
    print(f"| what | images side by side (median of {args.rounds}) | one after another | serial / side by side, paired |")
    print("| --- | ---: | ---: | ---: |")
    for kind, t in times.items():
        ratios = [s / p for s, p in zip(t["serial"], t["threads"])]
        print(f"| {kind} | {statistics.median(t['threads']) * 1000:.1f} ms | {statistics.median(t['serial']) * 1000:.1f} ms | "
              f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}) |")


if __name__ == "__main__":
    main()
