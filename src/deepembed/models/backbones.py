"""Backbones: modules mapping images (B, C, H, W) to pooled features (B, num_features)."""

from __future__ import annotations

import torch
from torch import nn

from deepembed.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@BACKBONES.register("small_cnn")
class SmallCNN(nn.Module):
    """Five 3x3 conv layers with batch norm for small images (28x28 grey by default).

    Resolution halves after the 1st and 3rd conv; features are the global average and max
    pools of the last map, concatenated: num_features = 2 * widths[-1].
    """

    def __init__(self, in_channels: int = 1, widths: list[int] | None = None) -> None:
        super().__init__()
        w = list(widths or [32, 64, 64, 128, 128])
        if len(w) != 5:
            raise ValueError(f"small_cnn needs 5 widths, got {w}")
        self.features = nn.Sequential(
            *_conv(in_channels, w[0]),
            nn.MaxPool2d(2),  # 28 -> 14
            *_conv(w[0], w[1]),
            *_conv(w[1], w[2]),
            nn.MaxPool2d(2),  # 14 -> 7
            *_conv(w[2], w[3]),
            *_conv(w[3], w[4]),
        )
        self.num_features = 2 * w[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, w4, H/4, W/4)
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)  # (B, 2 * w4)
