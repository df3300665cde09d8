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

    Resolution halves after the 1st and 3rd conv. Features are the last map average-pooled
    to a `pool_size` x `pool_size` grid (keeping coarse layout: a 6 and a 9 differ by where
    their loop is) and its global max, concatenated: (pool_size^2 + 1) * widths[-1].
    """

    def __init__(
        self, in_channels: int = 1, widths: list[int] | None = None, pool_size: int = 1
    ) -> None:
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
        self.pool_size = pool_size
        self.num_features = (pool_size * pool_size + 1) * w[4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, w4, H/4, W/4)
        grid = nn.functional.adaptive_avg_pool2d(x, self.pool_size).flatten(1)  # (B, s*s*w4)
        return torch.cat([grid, x.amax((2, 3))], 1)  # (B, num_features)
