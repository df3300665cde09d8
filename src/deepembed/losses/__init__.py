"""Losses by name: `create(name, **params)`, `names()`; loss(embeddings, labels, mined)."""

from __future__ import annotations

from typing import Any

from deepembed.losses.base import MetricLoss
from deepembed.losses.pair import MultiSimilarityLoss
from deepembed.losses.triplet import TripletMarginLoss
from deepembed.registry import Registry

LOSSES: Registry[MetricLoss] = Registry("loss")
LOSSES.register("multi_similarity")(MultiSimilarityLoss)
LOSSES.register("triplet")(TripletMarginLoss)


def create(name: str, **params: Any) -> MetricLoss:
    """A loss by registry name, with pytorch-metric-learning's parameter names."""
    return LOSSES.create(name, **params)


def names() -> list[str]:
    """Registered loss names."""
    return LOSSES.names()


__all__ = ["LOSSES", "MetricLoss", "create", "names"]
