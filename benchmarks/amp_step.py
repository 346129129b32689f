"""The default model's training step in float32 and under bf16 autocast, interleaved, on the CPU.

    python benchmarks/amp_step.py [--rounds 6] [--threads 2]

One process, the default config's model (configs/model/faster_rcnn_vgg16.yaml), 4 images of
300 x 300, two boxes each; forward + loss + backward + SGD step (detector.engine.train_step). The
two precisions alternate within each round, so both see the same machine state; the table gives
the medians and the paired ratios. It prints what ``solver.amp=auto`` chooses on this CPU and why.
Run it with no other torch process on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import detector.cli  # noqa: F401 -- before torch: OpenMP's spin as the commands set it (detector/cli/openmp.py)
import torch
from hydra import compose, initialize_config_dir

from detector.engine.step import resolve_amp, train_step

ROOT = Path(__file__).resolve().parents[1]


def build_default_model(class_names: list[str]) -> torch.nn.Module:
    """The default model, built part by part by the config layer (detector/cli/config.py: build_model)."""
    from detector.cli.config import build_model

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train")
    return build_model(cfg.model, class_names=class_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_default_model(["circle", "square", "triangle", "cross", "ring"]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 300, 300, generator=g) for _ in range(4)]
    boxes = torch.tensor([[20.0, 30.0, 120.0, 160.0], [150.0, 40.0, 260.0, 200.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1, 2])} for _ in images]

    def step(dtype: torch.dtype | None) -> float:
        start = time.perf_counter()
        train_step(model, images, targets, optimizer, iteration=0, amp_dtype=dtype)
        return time.perf_counter() - start

    dtypes = (None, torch.bfloat16)
    for dtype in dtypes:  # warm-up: allocator, oneDNN primitive caches
        step(dtype), step(dtype)
    times: dict = {dtype: [] for dtype in dtypes}
    for _ in range(args.rounds):
        for dtype in dtypes:
            times[dtype].append(step(dtype))
    f32, bf16 = (statistics.median(times[d]) for d in dtypes)
    paired = [b / f for f, b in zip(times[None], times[torch.bfloat16])]
    caps = torch.cpu.get_capabilities()
    print(f"cpu: {caps.get('cpu_name')}  amx_bf16={caps.get('amx_bf16')}  avx512_bf16={caps.get('avx512_bf16')}  "
          f"threads={torch.get_num_threads()}  torch {torch.__version__}")
    print(f"{resolve_amp('auto', torch.device('cpu')).reason}")
    print("| precision | step (median of %d) |" % args.rounds)
    print("| --- | --- |")
    print(f"| float32 | {f32 * 1000:.0f} ms |")
    print(f"| bf16 autocast | {bf16 * 1000:.0f} ms |")
    print(f"bf16 / float32 time, paired per round: {min(paired):.2f}-{max(paired):.2f} (median {statistics.median(paired):.2f})")


if __name__ == "__main__":
    main()
