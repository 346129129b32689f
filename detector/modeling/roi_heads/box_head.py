"""FC6/FC7 box head: the two fully connected layers of VGG16 that follow the RoI pooling layer.

Shape shorthand:
    R: RoIs in the batch, C: feature channels, k x k: pooled size, D: representation size

Fast R-CNN (section 2.2) replaces VGG16's last max-pool by RoI pooling to 7 x 7 and keeps fc6/fc7
(4096-d, ReLU, dropout 0.5) as the per-RoI head. ``representation_size`` makes them smaller for a
width-reduced backbone trained from scratch on a CPU.
"""

from __future__ import annotations

from torch import Tensor, nn


class FC2BoxHead(nn.Module):
    """flatten -> fc6 -> ReLU (-> dropout) -> fc7 -> ReLU (-> dropout)."""

    def __init__(
        self, *, in_channels: int, pooled_size: int | tuple[int, int], representation_size: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        kh, kw = (pooled_size, pooled_size) if isinstance(pooled_size, int) else pooled_size
        self.out_features = int(representation_size)
        layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
        in_features = in_channels * kh * kw
        for name in ("fc6", "fc7"):
            fc = nn.Linear(in_features, self.out_features)
            nn.init.kaiming_uniform_(fc.weight, a=1)  # c2_xavier_fill, as detectron2's FC heads
            nn.init.zeros_(fc.bias)
            layers += [fc, nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_features = self.out_features
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: Tensor) -> Tensor:
        """pooled [R, C, kh, kw] -> [R, D]"""
        return self.layers(pooled)
