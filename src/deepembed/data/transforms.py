"""Batch transforms applied on the training device: cheap augmentation for small images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RandomAffine(nn.Module):
    """Per-image random rotation, scale and translation of a (B, C, H, W) batch.

    One affine_grid + grid_sample call for the whole batch, so augmentation costs little
    next to the training step (per-image PIL transforms would dominate it at 28x28).
    """

    def __init__(
        self, degrees: float = 10.0, translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1)
    ) -> None:
        super().__init__()
        self.degrees, self.translate, self.scale = degrees, translate, scale

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        dev, dtype = images.device, images.dtype
        angle = (torch.rand(b, device=dev, dtype=dtype) * 2 - 1) * math.radians(self.degrees)
        lo, hi = self.scale
        scale = lo + torch.rand(b, device=dev, dtype=dtype) * (hi - lo)
        shift = (torch.rand(b, 2, device=dev, dtype=dtype) * 2 - 1) * 2 * self.translate
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # (B, 2, 3) inverse maps from output to input coordinates in [-1, 1]
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, padding_mode="zeros", align_corners=False)


def train_augmentation(enabled: bool) -> nn.Module:
    """The training preset for small grey images (identity when disabled)."""
    return RandomAffine() if enabled else nn.Identity()
