"""Benchmarks, as ratios against a reference measured in the same run (these machines are noisy).

    python tools/benchmark.py ops                  # RoI operators at the training shape, CPU (+ CUDA)
    python tools/benchmark.py ops --repeat 9 --device cpu
    python tools/benchmark.py ops --device cuda --dtype bfloat16   # a bf16 map, float32 RoIs
    python tools/benchmark.py train                # training step vs torchvision's FasterRCNN (tools/benchmark_train.py)
    python tools/benchmark.py train --split        # ... and where our step's time goes

``ops``: forward and forward+backward time of every RoIAlign / RoIPool mode of ``detector.ops``
against torchvision's kernels, at the training shape of the seed's detector: 2 images, 512 channels,
a 25 x 18 map at stride 32 (800 x 576 images), 512 RoIs per image, 7 x 7 output, sampling ratio 2,
aligned. Each line is the median of ``--repeat`` runs, modes interleaved run by run so that a noisy
neighbour slows them all alike. "vs avg, paired" is the median over runs of the ratio to our avg taken
within the same run (moments apart): on a shared machine it moves less than the ratio of medians.
Forward+backward is timed twice: with the upstream gradient made inside the timed region
(``ones_like``, as before; a fresh tensor of the output's size, whose first touch both operators pay)
and with it made before the clock starts ("given": the operator's own work alone).

``--dtype bfloat16``: the map in bfloat16, the RoIs in float32 (as the detector's autocast delivers
them). Our operators take that pair directly (float32 geometry, bf16 taps); torchvision's run under
``torch.autocast`` as its own detector does, through its autocast wrappers (a float32 copy of the map,
float32 pooling, the result cast back), or on the bf16 pair directly where its kernel takes it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from detector.ops import roi_align, roi_pool


def training_shape(device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 512, 18, 25, generator=g)
    xy = torch.rand(1024, 2, generator=g) * torch.tensor([760.0, 540.0])
    wh = torch.rand(1024, 2, generator=g) * 320 + 8
    batch = (torch.arange(1024) // 512).float()[:, None]
    rois = torch.cat([batch, xy, (xy + wh).clamp(max=torch.tensor([800.0, 576.0]))], dim=1)
    return features.to(device, dtype), rois.to(device)


def _time(fn: Callable[[], torch.Tensor], features: torch.Tensor, grad: torch.Tensor | str | None) -> float:
    """One timed call: forward only (``grad=None``), forward+backward with the upstream gradient made
    inside the timed region (``"fresh"``: ``ones_like``, as a caller's backward allocates it), or
    forward+backward on a gradient made before the clock starts (a tensor: the operator's own work)."""
    sync = torch.cuda.synchronize if features.is_cuda else (lambda: None)
    features.grad = None
    sync()
    t = time.perf_counter()
    out = fn()
    if grad is not None:
        out.backward(torch.ones_like(out) if isinstance(grad, str) else grad)
    sync()
    return time.perf_counter() - t


def _under_autocast(device: torch.device, dtype: torch.dtype, fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` under ``torch.autocast`` when the map is half precision: how torchvision's detector calls
    its RoI ops (its autocast wrappers pool in float32 and cast the result back)."""
    if dtype == torch.float32:
        return fn

    def wrapped() -> torch.Tensor:
        with torch.autocast(device.type, dtype=dtype):
            return fn()

    return wrapped


def bench_ops(
    device: torch.device, repeat: int, dtype: torch.dtype = torch.float32
) -> tuple[list[tuple[str, float, float, float]], dict[str, float]]:
    """Rows (mode, median fwd s, median fwd+bwd s, median fwd+bwd s with the gradient given) and, per
    roi_align mode, the paired f+b ratio to avg."""
    features, rois = training_shape(device, dtype=dtype)
    features.requires_grad_(True)
    s = 1 / 32
    tv_align = _under_autocast(device, dtype, lambda: torchvision.ops.roi_align(features, rois, 7, s, 2, True))
    if dtype != torch.float32 and device.type == "cpu":
        # torchvision's roi_pool has no bf16 CPU kernel and, unlike its roi_align, no CPU autocast
        # wrapper: float32 pooling and a cast back, as its roi_align's wrapper does.
        tv_pool = lambda: torchvision.ops.roi_pool(features.float(), rois, 7, s).to(dtype)  # noqa: E731
    else:
        tv_pool = _under_autocast(device, dtype, lambda: torchvision.ops.roi_pool(features, rois, 7, s))
    modes: dict[str, Callable[[], torch.Tensor]] = {
        "torchvision roi_align (avg, centered)": tv_align,
        "roi_align avg centered": lambda: roi_align(features, rois, 7, s, 2, True),
        "roi_align avg interior": lambda: roi_align(features, rois, 7, s, 2, True, sample_layout="interior"),
        "roi_align max centered": lambda: roi_align(features, rois, 7, s, 2, True, reduction="max"),
        "roi_align max interior": lambda: roi_align(features, rois, 7, s, 2, True, reduction="max", sample_layout="interior"),
        "torchvision roi_pool": tv_pool,
        "roi_pool round": lambda: roi_pool(features, rois, 7, s),
        "roi_pool floor": lambda: roi_pool(features, rois, 7, s, quantization="floor"),
    }
    times = {name: ([], [], []) for name in modes}
    given = None
    for name, fn in modes.items():  # warm-up
        _time(fn, features, "fresh")
        given = torch.ones_like(fn().detach())  # every mode's output has this shape
    for _ in range(repeat):
        for name, fn in modes.items():
            times[name][0].append(_time(fn, features, None))
            times[name][1].append(_time(fn, features, "fresh"))
            times[name][2].append(_time(fn, features, given))
    rows = [(name, statistics.median(f), statistics.median(fb), statistics.median(fg)) for name, (f, fb, fg) in times.items()]
    avg = times["roi_align avg centered"][1]
    paired = {
        name: statistics.median(t / a for t, a in zip(fb, avg)) for name, (_, fb, _) in times.items() if name.startswith("roi_align")
    }
    return rows, paired


def report_ops(
    rows: list[tuple[str, float, float, float]], device: torch.device, paired: dict[str, float] | None = None,
    dtype: torch.dtype = torch.float32,
) -> str:
    by = {name: (f, fb, fg) for name, f, fb, fg in rows}
    ref_align = by["torchvision roi_align (avg, centered)"]
    ref_pool = by["torchvision roi_pool"]
    ours_avg = by["roi_align avg centered"]
    lines = [
        f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}",
        "shape: 2 x 512 x 18 x 25 features (stride 32), 1024 RoIs, 7x7 output, sampling ratio 2, aligned"
        + ("" if dtype == torch.float32 else f"; map {str(dtype).removeprefix('torch.')}, RoIs float32, torchvision under autocast"),
        "speed-up = torchvision's time / ours (higher is better); vs avg = ours / our avg-centered",
        "f+b: the upstream gradient made in the timed region (ones_like); given: made before the clock",
        f"{'mode':<40} {'fwd ms':>8} {'f+b ms':>8} {'given ms':>9} {'speed-up fwd':>13} {'speed-up f+b':>13}"
        f" {'given':>7} {'vs avg f+b':>11}"
        + (f" {'vs avg, paired':>15}" if paired else ""),
    ]
    for name, f, fb, fg in rows:
        ref = ref_pool if "roi_pool" in name else ref_align
        vs_avg = f"{fb / ours_avg[1]:.2f}x" if name.startswith("roi_align") else ""
        line = (
            f"{name:<40} {f * 1e3:8.1f} {fb * 1e3:8.1f} {fg * 1e3:9.1f} {ref[0] / f:12.2f}x {ref[1] / fb:12.2f}x "
            f"{ref[2] / fg:6.2f}x {vs_avg:>11}"
        )
        if paired and name in paired:
            line += f" {paired[name]:14.2f}x"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ops", "train"], help="what to benchmark")
    parser.add_argument("--repeat", type=int, default=5, help="ops: timed runs per mode (median reported)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default=None, help="ops: all (default); train: cpu (default) or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="ops: the feature map's dtype")
    train = parser.add_argument_group("train (default: VGG16-BN width 0.25, 320 px, batch 4, 512 RoIs per image)")
    train.add_argument("--width", type=float, default=0.25, help="VGG16 channel multiplier")
    train.add_argument("--size", type=int, default=320, help="image size (min_size = max_size)")
    train.add_argument("--batch", type=int, default=4, help="images per step")
    train.add_argument("--rois", type=int, default=512, help="RoIs per image (box head sampler)")
    train.add_argument("--rpn-topk", type=int, nargs=2, default=[2000, 2000], metavar=("PRE", "POST"), help="RPN top-k in training")
    train.add_argument("--rounds", type=int, default=10, help="timed steps per detector (after 2 warm-up steps)")
    train.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    train.add_argument("--split", action="store_true", help="also time our step stage by stage")
    train.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes (CPU)")
    train.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                       help="a configs/train.yaml override for both detectors (repeatable), e.g. dataset=voc ...")
    train.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.what == "train":
        from detector.cli import benchmark_train

        if args.memory_of:
            return benchmark_train.memory_of(args, args.memory_of)
        args.device = args.device or "cpu"
        if args.device == "all":
            raise SystemExit("error: train runs on one device: --device cpu or --device cuda")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("error: --device cuda but no CUDA GPU is available")
        print(benchmark_train.run_train_benchmark(args))
        return
    args.device = args.device or "all"
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    elif args.device == "cuda":
        raise SystemExit("error: --device cuda but no CUDA GPU is available")
    for device in devices:
        dtype = getattr(torch, args.dtype)
        rows, paired = bench_ops(device, args.repeat, dtype)
        print(report_ops(rows, device, paired, dtype))
        print()


def run() -> None:
    """The command line: ``python tools/<tool>.py ...`` and ``roilens <command> ...``."""
    main()


if __name__ == "__main__":
    run()
