"""Benchmarks, as ratios against a reference measured in the same run (these machines are noisy).

    python tools/benchmark.py ops                  # RoI operators at the training shape, CPU (+ CUDA)
    python tools/benchmark.py ops --repeat 9 --device cpu

``ops``: forward and forward+backward time of every RoIAlign / RoIPool mode of ``detector.ops``
against torchvision's kernels, at the training shape of the seed's detector: 2 images, 512 channels,
a 25 x 18 map at stride 32 (800 x 576 images), 512 RoIs per image, 7 x 7 output, sampling ratio 2,
aligned. Each line is the median of ``--repeat`` runs, modes interleaved run by run so that a noisy
neighbour slows them all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from detector.ops import roi_align, roi_pool


def training_shape(device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 512, 18, 25, generator=g)
    xy = torch.rand(1024, 2, generator=g) * torch.tensor([760.0, 540.0])
    wh = torch.rand(1024, 2, generator=g) * 320 + 8
    batch = (torch.arange(1024) // 512).float()[:, None]
    rois = torch.cat([batch, xy, (xy + wh).clamp(max=torch.tensor([800.0, 576.0]))], dim=1)
    return features.to(device), rois.to(device)


def _time(fn: Callable[[], torch.Tensor], features: torch.Tensor, backward: bool) -> float:
    sync = torch.cuda.synchronize if features.is_cuda else (lambda: None)
    features.grad = None
    sync()
    t = time.perf_counter()
    out = fn()
    if backward:
        out.backward(torch.ones_like(out))
    sync()
    return time.perf_counter() - t


def bench_ops(device: torch.device, repeat: int) -> list[tuple[str, float, float]]:
    features, rois = training_shape(device)
    features.requires_grad_(True)
    s = 1 / 32
    modes: dict[str, Callable[[], torch.Tensor]] = {
        "torchvision roi_align (avg, centered)": lambda: torchvision.ops.roi_align(features, rois, 7, s, 2, True),
        "roi_align avg centered": lambda: roi_align(features, rois, 7, s, 2, True),
        "roi_align avg interior": lambda: roi_align(features, rois, 7, s, 2, True, sample_layout="interior"),
        "roi_align max centered": lambda: roi_align(features, rois, 7, s, 2, True, reduction="max"),
        "roi_align max interior": lambda: roi_align(features, rois, 7, s, 2, True, reduction="max", sample_layout="interior"),
        "torchvision roi_pool": lambda: torchvision.ops.roi_pool(features, rois, 7, s),
        "roi_pool round": lambda: roi_pool(features, rois, 7, s),
        "roi_pool floor": lambda: roi_pool(features, rois, 7, s, quantization="floor"),
    }
    times = {name: ([], []) for name in modes}
    for name, fn in modes.items():  # warm-up
        _time(fn, features, True)
    for _ in range(repeat):
        for name, fn in modes.items():
            times[name][0].append(_time(fn, features, False))
            times[name][1].append(_time(fn, features, True))
    return [(name, statistics.median(f), statistics.median(fb)) for name, (f, fb) in times.items()]


def report_ops(rows: list[tuple[str, float, float]], device: torch.device) -> str:
    by = {name: (f, fb) for name, f, fb in rows}
    ref_align = by["torchvision roi_align (avg, centered)"]
    ref_pool = by["torchvision roi_pool"]
    ours_avg = by["roi_align avg centered"]
    lines = [
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        "shape: 2 x 512 x 18 x 25 features (stride 32), 1024 RoIs, 7x7 output, sampling ratio 2, aligned",
        "speed-up = torchvision's time / ours (higher is better); vs avg = ours / our avg-centered",
        f"{'mode':<40} {'fwd ms':>8} {'fwd+bwd ms':>11} {'speed-up fwd':>13} {'speed-up f+b':>13} {'vs avg f+b':>11}",
    ]
    for name, f, fb in rows:
        ref = ref_pool if "roi_pool" in name else ref_align
        vs_avg = f"{fb / ours_avg[1]:.2f}x" if name.startswith("roi_align") else ""
        lines.append(
            f"{name:<40} {f * 1e3:8.1f} {fb * 1e3:11.1f} {ref[0] / f:12.2f}x {ref[1] / fb:12.2f}x {vs_avg:>11}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ops"], help="what to benchmark")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per mode (median reported)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    args = parser.parse_args()
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        raise SystemExit("error: --device cuda but no CUDA GPU is available")
    for device in devices:
        print(report_ops(bench_ops(device, args.repeat), device))
        print()


if __name__ == "__main__":
    main()
