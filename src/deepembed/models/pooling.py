"""Pooling: feature maps (B, C, h, w) -> one vector per image (B, out_features).

`model.pool`: avg, max, avgmax (their sum, the Proxy-Anchor recipe), gem (generalised mean
with a learnable exponent p, Radenović et al.), gridmax (small_cnn's: an s x s grid of
averages plus the global max, keeping coarse layout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepembed.errors import ConfigError


class Pool(nn.Module):
    """Base: `out_features` is the vector length for maps of `channels` channels."""

    out_features: int


class AvgPool(Pool):
    """Global average."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.mean((2, 3))


class MaxPool(Pool):
    """Global max."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.amax((2, 3))


class AvgMaxPool(Pool):
    """Global average + global max (summed, as Proxy-Anchor's training code does)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.mean((2, 3)) + maps.amax((2, 3))


class GeMPool(Pool):
    """Generalised mean (mean of x^p)^(1/p) over positions, p learnable (init `p`)."""

    def __init__(self, channels: int, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"gem p must be > 0, got {p}")
        self.out_features = channels
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1e-3)
        return maps.clamp(min=self.eps).pow(p).mean((2, 3)).pow(1.0 / p)


class GridMaxPool(Pool):
    """An s x s grid of averages and the global max, concatenated: (s^2 + 1) * C."""

    def __init__(self, channels: int, grid: int = 1) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"gridmax grid must be >= 1, got {grid}")
        self.grid = grid
        self.out_features = (grid * grid + 1) * channels

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        cells = F.adaptive_avg_pool2d(maps, self.grid).flatten(1)  # (B, s*s*C)
        return torch.cat([cells, maps.amax((2, 3))], 1)


POOLS: dict[str, Callable[..., Pool]] = {
    "avg": AvgPool,
    "max": MaxPool,
    "avgmax": AvgMaxPool,
    "gem": GeMPool,
    "gridmax": GridMaxPool,
}


def create_pool(name: str, channels: int, **params: Any) -> Pool:
    """Pooling `name` for maps of `channels` channels; bad names or parameters: ConfigError."""
    if name not in POOLS:
        raise ConfigError(f"model.pool: unknown pooling {name!r}; known: {', '.join(POOLS)}")
    try:
        return POOLS[name](channels, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.pool_params: bad parameters for pooling {name!r}: {exc}") from exc
