"""Which layout each VGG16 stage trains in on the CPU: BatchNorm and conv backward, then backbones.

    python -m benchmarks.backbone_layout [--rounds 8] [--width 0.125] [--size 288 320]   # checkout root

Part 1, BatchNorm2d's backward alone (train mode, the same number of elements at every channel
count: 4 x C x 288 x (320 * 8 / C)), NCHW against NHWC, float32 and bf16: PyTorch's NHWC kernel
runs several times slower below 16 channels on the CPUs measured, which is why
:class:`detector.modeling.backbone.VGG16Backbone` runs such stages' BatchNorm NCHW in training.

Then a 3 x 3 convolution's backward at the same shape, NCHW against NHWC: oneDNN's NCHW kernels
were the slow ones on the AMD EPYC measured, which is why the narrow stages' convolutions run NHWC.

Part 2, the backbone's forward + backward on 4 images, five layouts interleaved in each round on
the same weights: every stage NCHW; every stage NHWC; NHWC from the first stage of at least 16
channels on; NHWC from stage 3 on; every convolution NHWC with the narrower stages' BatchNorm, ReLU
and max-pool NCHW (what ``channels_last=True`` does in training). Medians and the
ratio to "all NHWC" paired per round; ``--eval`` times the forward in eval mode under ``no_grad``
instead. Run it with no other torch process on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import detector.cli  # noqa: F401 -- before torch: OpenMP's spin as the commands set it (detector/cli/openmp.py)
import torch
from torch import nn

from detector.modeling.backbone import VGG16Backbone


def batchnorm_backward(rounds: int) -> None:
    print("BatchNorm2d backward, 4 x C x 288 x (320 * 8 / C) elements, median ms")
    print(f"{'C':>3} {'dtype':>9} {'NCHW':>7} {'NHWC':>7} {'NHWC / NCHW':>12}")
    for channels in (4, 8, 12, 16, 32, 64):
        for dtype in (torch.float32, torch.bfloat16):
            times = {}
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(4, channels, 288, 320 * 8 // channels).to(dtype).contiguous(memory_format=layout)
                x.requires_grad_()
                bn = nn.BatchNorm2d(channels).train()
                runs = []
                for i in range(rounds + 1):
                    y = bn(x)
                    grad = torch.ones_like(y)
                    start = time.perf_counter()
                    y.backward(grad)
                    if i:  # the first is a warm-up
                        runs.append(time.perf_counter() - start)
                times[layout] = statistics.median(runs) * 1e3
            cf, cl = times[torch.contiguous_format], times[torch.channels_last]
            print(f"{channels:>3} {str(dtype)[6:]:>9} {cf:7.2f} {cl:7.2f} {cl / cf:11.2f}x")


def convolution_backward(rounds: int) -> None:
    print("\n3 x 3 convolution backward (input and weight gradients), 4 x C x 288 x 320 -> 8 channels, median ms")
    print(f"{'C':>3} {'dtype':>9} {'NCHW':>7} {'NHWC':>7} {'NHWC / NCHW':>12}")
    for channels in (8, 16):
        for dtype in (torch.float32, torch.bfloat16):
            times = {}
            for layout in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(4, channels, 288, 320).to(dtype).contiguous(memory_format=layout)
                grad = torch.randn(4, 8, 288, 320).to(dtype).contiguous(memory_format=layout)
                weight = (torch.randn(8, channels, 3, 3) * 0.1).to(dtype)
                runs = []
                for i in range(rounds + 1):
                    start = time.perf_counter()
                    torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [1, 1], [1, 1], False,
                                                        [0, 0], 1, [True, True, False])
                    if i:  # the first is a warm-up
                        runs.append(time.perf_counter() - start)
                times[layout] = statistics.median(runs) * 1e3
            cf, cl = times[torch.contiguous_format], times[torch.channels_last]
            print(f"{channels:>3} {str(dtype)[6:]:>9} {cf:7.2f} {cl:7.2f} {cl / cf:11.2f}x")


def backbone_layouts(rounds: int, width: float, size: tuple[int, int], train: bool) -> None:
    torch.manual_seed(0)
    backbone = VGG16Backbone(width=width, batch_norm=True).train(train)
    layers = list(backbone.features)
    starts = [0] + [i + 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]  # each stage's first module
    narrow = VGG16Backbone(width=width, batch_norm=True, channels_last=True).nchw_train_modules
    # name: (the first module of the NHWC part, whether the NCHW part's convolutions run NHWC)
    variants = {
        "all NCHW": (len(layers), False),
        "all NHWC": (0, False),
        "NHWC from the first >= 16-channel stage": (narrow, False),
        "NHWC from stage 3": (starts[2], False),
        "convs NHWC, narrow stages' BN NCHW (default)": (narrow, True),
    }
    images = torch.randn(4, 3, *size)

    def forward(split: int, convs_nhwc: bool) -> torch.Tensor:
        x = images
        for i, m in enumerate(layers):
            if i == split or (convs_nhwc and isinstance(m, nn.Conv2d)):
                x = x.contiguous(memory_format=torch.channels_last)
            x = m(x)
            if convs_nhwc and i < split and isinstance(m, nn.Conv2d):
                x = x.contiguous()
        return x.contiguous()

    print(f"\nbackbone width {width}, 4 images of {size[0]} x {size[1]}, "
          f"{'forward + backward (train)' if train else 'forward (eval, no_grad)'}, median ms")
    for amp in (False, True):
        runs = {name: [] for name in variants}
        for r in range(rounds + 2):
            for name, (split, convs_nhwc) in variants.items():
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(train):
                    y = forward(split, convs_nhwc)
                if train:
                    y.float().sum().backward()
                    backbone.zero_grad(set_to_none=True)
                if r >= 2:  # two warm-up rounds
                    runs[name].append(time.perf_counter() - start)
        base = runs["all NHWC"]
        for name in variants:
            paired = statistics.median(b / t for b, t in zip(base, runs[name]))
            print(f"  {'bf16' if amp else 'f32 '} {name:46s} {statistics.median(runs[name]) * 1e3:7.1f}"
                  f"   {paired:.2f}x vs all NHWC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--size", type=int, nargs=2, default=[288, 320], metavar=("H", "W"))
    parser.add_argument("--eval", action="store_true", help="part 2 in eval mode (forward only)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    batchnorm_backward(args.rounds)
    convolution_backward(args.rounds)
    backbone_layouts(args.rounds, args.width, tuple(args.size), train=not args.eval)


if __name__ == "__main__":
    main()
