"""VGG16 backbone (Simonyan & Zisserman 2015) built from torchvision's own layer definitions.

Shape shorthand:
    N: images, C: output channels (512 * width), H, W: padded input size
    output: [N, C, H / stride, W / stride]

The seed's network keeps all **5 max-pools**, so a 800 x 576 image becomes a 25 x 18 map and every
feature cell stands for a 32 x 32 pixel patch ("each value represents 32x32 pixels"): RoIPool's
quantization then moves box edges by up to 31 pixels, which is what RoIAlign fixes. ``stride=16``
drops the last pool, as in the original Fast/Faster R-CNN (conv5_3 features).

Options:
    batch_norm: use VGG16-BN's layers (``torchvision.models.vgg.cfgs["D"]`` with BatchNorm), which
        lets a network train from scratch in a few minutes on the embedded dataset.
    width: channel multiplier (0.25 gives 16-32-64-128-128 channels) for CPU training from scratch.
    freeze_at: number of conv stages (1..5, each ending at a pool) whose parameters are frozen; the
        Fast R-CNN paper fine-tunes VGG16 from conv3_1 on, i.e. ``freeze_at=2``.
    weights: ``None`` (random init), ``"imagenet"`` (torchvision's ImageNet VGG16 / VGG16-BN weights,
        downloaded into torch's hub cache when online) or the path of a local state dict file.
    channels_last: run the convolutions on a channels-last (NHWC) copy of the images and return the
        map in the usual (NCHW) layout. oneDNN's convolution, BatchNorm and pooling kernels are faster
        on NHWC, most of all in bf16 on a CPU: the default width-0.125 backbone's forward + backward
        on 4 images of 256 x 320, 2 threads, went from 190 to 149 ms in float32 and from 167 to 110 ms
        under bf16 autocast. Only the activations change layout; the weights and their state dict
        stay as they are (converting the weights too measured no better).
        In training, the BatchNorm, ReLU and max-pool of the leading stages narrower than
        ``NHWC_MIN_TRAIN_CHANNELS`` channels run NCHW, between convolutions that still run NHWC.
        PyTorch's CPU BatchNorm backward on NHWC runs several times slower below 16 channels (its
        kernel vectorizes over the channels), while oneDNN's convolution backward on NCHW is the slow
        one at that width; the copies between the layouts cost less than either. The measurements,
        on two CPUs and in the training loop (``python -m benchmarks.backbone_layout``): docs/speed.md,
        "The narrow stages' convolutions train NHWC". Evaluation keeps every stage
        NHWC (BatchNorm's eval form has no backward, and NHWC was faster there).
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VGG16_BN_Weights, VGG16_Weights
from torchvision.models.vgg import cfgs, make_layers

from detector.errors import CheckpointError, ConfigError


# Channels-last stages in training start at the first stage this wide (see the module docstring).
NHWC_MIN_TRAIN_CHANNELS = 16


class VGG16Backbone(nn.Module):
    """VGG16 ``features`` with a configurable number of pools, width and frozen stages."""

    def __init__(
        self,
        *,
        stride: int = 32,
        batch_norm: bool = False,
        width: float = 1.0,
        freeze_at: int = 0,
        weights: str | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if stride not in (16, 32):
            raise ConfigError(f"stride must be 16 or 32 (VGG16 has 5 pools), got {stride}")
        if not 0 < width <= 4:
            raise ConfigError(f"width must be in (0, 4], got {width}")
        if not 0 <= freeze_at <= 5:
            raise ConfigError(f"freeze_at must be in 0..5 (conv stages), got {freeze_at}")
        layer_cfg: list[int | str] = [
            v if v == "M" else max(1, int(round(int(v) * width))) for v in cfgs["D"]
        ]
        if stride == 16:
            layer_cfg = layer_cfg[:-1]  # drop pool5: conv5_3 features at stride 16
        self.stride = stride
        self.batch_norm = bool(batch_norm)
        self.width = float(width)
        self.freeze_at = int(freeze_at)
        self.channels_last = bool(channels_last)
        self.out_channels = int([v for v in layer_cfg if v != "M"][-1])
        # Same module indices as torchvision's VGG16 `features`, so its state dict loads as is.
        self.features = make_layers(layer_cfg, batch_norm=self.batch_norm)
        # Modules of the leading stages narrower than NHWC_MIN_TRAIN_CHANNELS: their BatchNorm, ReLU
        # and max-pool run NCHW in training (their convolutions NHWC).
        self.nchw_train_modules = 0
        for stage in self._stages() if self.batch_norm else ():
            convs = [m for m in stage if isinstance(m, nn.Conv2d)]
            if not convs or max(c.out_channels for c in convs) >= NHWC_MIN_TRAIN_CHANNELS:
                break
            self.nchw_train_modules += len(stage)

        if weights is not None:
            self.load_pretrained(weights)
        self._freeze()

    def _stages(self) -> list[list[nn.Module]]:
        """The 5 conv stages (modules up to and including each max-pool)."""
        stages, current = [], []
        for m in self.features:
            current.append(m)
            if isinstance(m, nn.MaxPool2d):
                stages.append(current)
                current = []
        if current:
            stages.append(current)
        return stages

    def _freeze(self) -> None:
        for stage in self._stages()[: self.freeze_at]:
            for m in stage:
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "VGG16Backbone":
        super().train(mode)
        # Frozen BatchNorm layers keep their ImageNet statistics: update nothing in frozen stages.
        # _BatchNorm, not BatchNorm2d: SyncBatchNorm (model.sync_bn) replaces them and must stay frozen too.
        for stage in self._stages()[: self.freeze_at]:
            for m in stage:
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def load_pretrained(self, weights: str) -> None:
        """Load ``"imagenet"`` or a local file (torchvision VGG16 state dict or this module's)."""
        if weights == "imagenet":
            if self.width != 1.0:
                raise ConfigError(
                    f"weights=imagenet needs width=1.0, got {self.width}"
                )
            enum = VGG16_BN_Weights.IMAGENET1K_V1 if self.batch_norm else VGG16_Weights.IMAGENET1K_V1
            try:
                state = torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True)
            except (urllib.error.URLError, OSError, RuntimeError) as e:
                cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)
                raise CheckpointError(
                    f"cannot download ImageNet VGG16 weights from {enum.url} ({e.__class__.__name__}: "
                    f"{e}); with no internet, copy that file to {cache} or pass weights=/path/to/vgg16.pth"
                ) from None
        else:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise CheckpointError(f"backbone weights file not found: {path}")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for a corrupt file
                raise CheckpointError(f"cannot read backbone weights {path}: {e}") from None
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
        # Keep only the conv layers (torchvision's file also holds the classifier fc6/fc7/fc8).
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        own = self.state_dict()
        mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if k not in state]
        if mismatched or missing:
            raise CheckpointError(
                f"backbone weights {weights} do not fit VGG16(batch_norm={self.batch_norm}, "
                f"width={self.width}): missing {missing[:3]}, wrong shape {mismatched[:3]}"
            )
        self.load_state_dict({k: v for k, v in state.items() if k in own})

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] -> features [N, C, H / stride, W / stride] (floor)."""
        if not self.channels_last:
            return self.features(images)
        x = images
        split = self.nchw_train_modules if self.training else 0
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):  # every stage starts with one
                x = x.contiguous(memory_format=torch.channels_last)  # a no-op when it already is
            x = m(x)
            if i < split and isinstance(m, nn.Conv2d):
                x = x.contiguous()  # a narrow stage's BatchNorm, ReLU and max-pool: NCHW
        # The map goes back to NCHW (cheap: 1/32 of the side) for the heads and the RoI operators.
        return x.contiguous()

    def extra_repr(self) -> str:
        return (
            f"stride={self.stride}, batch_norm={self.batch_norm}, width={self.width}, "
            f"freeze_at={self.freeze_at}, out_channels={self.out_channels}, channels_last={self.channels_last}"
        )
