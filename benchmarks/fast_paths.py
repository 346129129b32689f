"""PyTorch's CPU fast paths on the default model's training step: the backbone's layout and torch.compile.

    python -m benchmarks.fast_paths [--rounds 8] [--threads 2] [--amp off|bf16] [--no-compile]   # from the checkout root

One process, the default config's model (as benchmarks/amp_step.py: 4 images of 300 x 300, two
boxes each; forward + loss + backward + SGD step), in float32 or under bf16 autocast. Variants:
the backbone's convolutions on channels-first activations (``channels_last=False``), on
channels-last ones (the default), channels-last with the weights converted too, and ``torch.compile``
of the default backbone. Each variant is its own copy of the same weights; the variants alternate
within each round, so all see the same machine state, and the table gives the medians and the ratio
to the channels-first model paired per round. ``torch.compile`` is timed twice: its first step (the
compilation) and its steady steps; it is worth adopting only if the steady gain repays the compile
time within a default run (1500 steps; every new padded image size compiles again).
Run it with no other torch process on the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import detector.cli  # noqa: F401 -- before torch: OpenMP's spin as the commands set it (detector/cli/openmp.py)
import torch

from benchmarks.amp_step import build_default_model
from detector.engine.step import train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
    base = build_default_model(["circle", "square", "triangle", "cross", "ring"]).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 300, 300, generator=g) for _ in range(4)]
    boxes = torch.tensor([[20.0, 30.0, 120.0, 160.0], [150.0, 40.0, 260.0, 200.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "sample_seed": i} for i in range(4)]

    def variant(channels_last: bool) -> torch.nn.Module:
        model = copy.deepcopy(base)
        model.backbone.channels_last = channels_last
        return model

    variants: dict[str, torch.nn.Module] = {"channels-first": variant(False), "channels-last (default)": variant(True)}
    variants["channels-last, weights too"] = variant(True).to(memory_format=torch.channels_last)
    compile_seconds = None
    if not args.no_compile:
        compiled = variant(True)
        compiled.backbone = torch.compile(compiled.backbone)
        variants["compile(backbone)"] = compiled
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in variants.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        train_step(variants[name], images, targets, optimizers[name], iteration=0, amp_dtype=amp_dtype)
        return time.perf_counter() - start

    for name in variants:  # warm-up (and, for the compiled copy, the compilation)
        first = step(name)
        if name.startswith("compile"):
            compile_seconds = first
        step(name)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name in variants:
            times[name].append(step(name))
    reference = times["channels-first"]
    print(f"threads={torch.get_num_threads()}  amp={args.amp}  torch {torch.__version__}  "
          f"cpu capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"| variant | step (median of {args.rounds}) | channels-first / variant, paired |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        ratios = [p / v for p, v in zip(reference, values)]
        print(f"| {name} | {statistics.median(values) * 1000:.0f} ms | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    if compile_seconds is not None:
        gain = statistics.median(times["channels-last (default)"]) - statistics.median(times["compile(backbone)"])
        print(f"torch.compile: first step {compile_seconds:.1f} s; steady gain {gain * 1000:.0f} ms/step"
              + (f", repaid after {compile_seconds / gain:.0f} steps" if gain > 0 else ", never repaid"))


if __name__ == "__main__":
    main()
