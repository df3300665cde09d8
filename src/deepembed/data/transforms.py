"""Transforms: on-device batch augmentation for small images, per-item presets for image files.

Presets are chosen by name (proposed config key `data.transform`: small | imagenet224).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from deepembed.data.preprocess import Preprocess
from deepembed.errors import ConfigError


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


# Named presets for library callers of `data.open(..., transform=NAME)`; the trainer and the
# CLI use the model's own Preprocess instead. Both are Preprocess objects: one implementation.
PRESETS = {
    # small images (28-64 px): resize only per item; augmentation is RandomAffine on the batch
    "small": Preprocess((32, 32), 3, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # the literature's 224-px protocol (CUB, Cars, SOP, In-Shop)
    "imagenet224": Preprocess((224, 224), 3, 256, "bilinear"),
}


def preset(name: str) -> Preprocess:
    """The preset called `name`; unknown names are a ConfigError."""
    if name not in PRESETS:
        raise ConfigError(f"data.transform: unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def build_transforms(
    name: str, train: bool, image_size: int | None = None, normalize: bool = False
) -> Callable[[Image.Image], torch.Tensor]:
    """Per-item transform of preset `name`: a PIL image -> (3, S, S) float tensor.

    imagenet224 train: RandomResizedCrop(224) + horizontal flip; eval: Resize(256) +
    CenterCrop(224). small: Resize + CenterCrop to `image_size` (default 32) for both; its
    training augmentation runs on the batch (`batch_augmentation`). Values stay in [0, 1]
    unless `normalize` (a model normalises its inputs itself).
    """
    p = preset(name)
    if image_size:
        p = p.at_size(image_size)
    augmented = train and name != "small"  # crop scale: torchvision's default (0.08, 1)
    base = p.train_transform((0.08, 1.0)) if augmented else p.transform()
    if not normalize:
        return base
    norm = v2.Normalize(list(p.mean), list(p.std))
    return lambda image: norm(base(image))


def batch_augmentation(name: str, enabled: bool) -> nn.Module:
    """On-device batch augmentation of preset `name`: RandomAffine for small, else identity."""
    preset(name)
    return train_augmentation(enabled and name == "small")
