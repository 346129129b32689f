"""Image preprocessing inside the model: normalise, resize by the shorter side, pad into a batch.

Shape shorthand:
    N: images; each input image is [3, Hi, Wi] float in 0..1 (any size)
    batch: [N, 3, Hp, Wp], Hp and Wp the largest resized sides rounded up to ``size_divisibility``

Fast R-CNN (section 3.1, "single scale") resizes every image so that its shorter side is ``min_size``
(600 in the paper) unless the longer side would exceed ``max_size`` (1000). Images of different sizes
are zero-padded at the bottom/right into one tensor; the padding is a multiple of the stride (32) so
that feature cells line up with image pixels exactly as the seed assumes (800 x 576 -> 25 x 18).
Doing this in the model (as torchvision's GeneralizedRCNNTransform does) means users pass raw images
and get boxes back in their original pixel coordinates.

At test time both sizes may be multiplied by ``test_scale`` (detectron2's separate MIN_SIZE_TEST /
MAX_SIZE_TEST, as a factor of the training sizes so that one number follows any ``min_size``). At stride
32 an object of 12-32 px covers less than one feature cell; testing a model trained at 256 px at 320 px
moves such objects towards the sizes the RPN and the 7 x 7 pooler resolve, and it was measured to pay on
data it was not chosen on (docs/defaults.md, "The test size").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detector.errors import ConfigError
from detector.modeling.sampler import STREAM_SCALE, sample_generator
from detector.ops.dense import exporting


@dataclass
class ImageList:
    """A padded batch and the (h, w) of each resized image inside it."""

    tensors: Tensor  # [N, 3, Hp, Wp]
    image_sizes: list[tuple[int, int]]


class DetectionTransform(nn.Module):
    """Normalise, resize and batch images (and resize their target boxes to match)."""

    def __init__(
        self,
        *,
        min_size: int | Sequence[int],
        max_size: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        test_scale: float = 1.0,
    ) -> None:
        super().__init__()
        # Several min sizes = multi-scale training (one drawn per image); the first is used at test.
        self.min_size = (int(min_size),) if isinstance(min_size, int) else tuple(int(s) for s in min_size)
        self.max_size = int(max_size)
        if not self.min_size or min(self.min_size) < 1:
            raise ConfigError(f"min_size must be at least 1 pixel, got {min_size!r}")
        if self.max_size < max(self.min_size):
            raise ConfigError(f"max_size={self.max_size} is below min_size={max(self.min_size)}; it caps the longer side")
        self.size_divisibility = int(size_divisibility)
        self.set_test_scale(test_scale)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    def set_test_scale(self, test_scale: float) -> None:
        """Test at ``test_scale`` x the training sizes from now on (also for a model already built)."""
        if isinstance(test_scale, bool) or not isinstance(test_scale, (int, float)) or not 0 < test_scale <= 8:
            raise ConfigError(f"test_scale must be a number in (0, 8], got {test_scale!r} (1 = test at the training size)")
        self.test_scale = float(test_scale)
        # The sizes in eval mode, rounded half up as the resize itself is.
        self.test_min_size = max(1, math.trunc(self.min_size[0] * self.test_scale + 0.5))
        self.test_max_size = max(self.test_min_size, math.trunc(self.max_size * self.test_scale + 0.5))

    def target_size(self, h: int, w: int, *, generator: torch.Generator | None = None) -> tuple[int, int]:
        """(height, width) an h x w image is resized to (in training, one of the min_size values at random,
        drawn from ``generator`` when given: the sample's own, see :mod:`detector.modeling.sampler`; in eval
        mode the test sizes, ``test_scale`` times the first)."""
        max_size = self.max_size
        if not self.training:
            min_size, max_size = self.test_min_size, self.test_max_size
        elif len(self.min_size) > 1:
            min_size = self.min_size[int(torch.randint(len(self.min_size), (), generator=generator).item())]
        else:
            min_size = self.min_size[0]
        # min_size on the shorter side unless that puts the longer one past max_size, rounded half up.
        # Written with operations a traced size keeps (no branch, no round()), so that an exported
        # program applies the same rule to any image size (detector.export).
        scale = torch.sym_min(min_size / torch.sym_min(h, w), max_size / torch.sym_max(h, w))
        # (trunc of a positive number is its floor; torch.export serialises trunc, not floor.)
        return torch.sym_max(1, math.trunc(h * scale + 0.5)), torch.sym_max(1, math.trunc(w * scale + 0.5))

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        resized, sizes, new_targets = [], [], [] if targets is not None else None
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            generator = sample_generator(targets[i], STREAM_SCALE) if targets is not None else None
            nh, nw = self.target_size(h, w, generator=generator)
            image = (image - self.pixel_mean) / self.pixel_std
            # (An exported program resizes every input: at the same size bilinear is the identity.)
            if exporting() or (nh, nw) != (h, w):
                image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            resized.append(image)
            sizes.append((nh, nw))
            if targets is not None:
                target = dict(targets[i])
                ratio = torch.tensor([nw / w, nh / h, nw / w, nh / h], device=image.device)
                target["boxes"] = target["boxes"] * ratio
                new_targets.append(target)

        d = self.size_divisibility
        if exporting() and len(resized) == 1:  # an exported program's one image, of any size
            (nh, nw), = sizes
            pad = (0, (nw + d - 1) // d * d - nw, 0, (nh + d - 1) // d * d - nh)
            return ImageList(F.pad(resized[0], pad)[None], sizes), new_targets
        hp = int(math.ceil(max(s[0] for s in sizes) / d) * d)
        wp = int(math.ceil(max(s[1] for s in sizes) / d) * d)
        # Pad with zeros *after* normalisation, i.e. with the mean colour, as torchvision/detectron2.
        batch = resized[0].new_zeros((len(resized), resized[0].shape[0], hp, wp))
        for img, pad in zip(resized, batch):
            pad[:, : img.shape[1], : img.shape[2]].copy_(img)
        return ImageList(batch, sizes), new_targets

    @staticmethod
    def postprocess(
        detections: list[dict[str, Tensor]],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Scale detection boxes from resized-image pixels back to the original images' pixels."""
        for det, (h, w), (oh, ow) in zip(detections, image_sizes, original_sizes):
            if exporting():  # the sizes may be symbolic: scalars, not a tensor built from them
                x1, y1, x2, y2 = det["boxes"].unbind(1)
                sx, sy = ow / w, oh / h
                det["boxes"] = torch.stack([x1 * sx, y1 * sy, x2 * sx, y2 * sy], dim=1)
                continue
            ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            det["boxes"] = det["boxes"] * ratio
        return detections

    def extra_repr(self) -> str:
        return (
            f"min_size={self.min_size}, max_size={self.max_size}, test_scale={self.test_scale:g} "
            f"(test: {self.test_min_size}, {self.test_max_size}), size_divisibility={self.size_divisibility}"
        )
