"""RPN head: a 3x3 conv "sliding window" then two sibling 1x1 convs (Faster R-CNN 3.1, figure 3).

Shape shorthand:
    N: images, C: feature channels, A: anchors per location, Hf, Wf: feature-map size
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class RPNHead(nn.Module):
    """Predicts an objectness logit and 4 box deltas per anchor at every feature-map location."""

    def __init__(self, *, in_channels: int, num_anchors: int, conv_channels: int | None = None) -> None:
        super().__init__()
        # The paper uses 512 intermediate channels for VGG16; default to the input width so a
        # width-reduced backbone gets a proportionally small head.
        conv_channels = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(conv_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(conv_channels, num_anchors * 4, kernel_size=1)
        # Gaussian std 0.01 and zero bias, as in the paper (section 3.1.3).
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features [N, C, Hf, Wf] -> (objectness_logits [N, A, Hf, Wf], anchor_deltas [N, 4A, Hf, Wf])."""
        t = F.relu(self.conv(features))
        return self.objectness_logits(t), self.anchor_deltas(t)
