"""Losses by name: `create(name, **params)`, `names()`; loss(embeddings, labels, mined).

Each family module registers its losses in LOSSES on import.
"""

from __future__ import annotations

from deepembed.losses import (  # noqa: F401
    hashing_classwise,
    hashing_pairwise,
    listwise,
    margin_softmax,
    pair,
    proxy,
    triplet,
    xbm,
)
from deepembed.losses.base import LOSSES, ClassLoss, MetricLoss
from deepembed.losses.pair import MultiSimilarityLoss
from deepembed.losses.triplet import TripletMarginLoss

create = LOSSES.create  # create(name, **params), PML's parameter names
names = LOSSES.names  # sorted registered names

__all__ = [
    "LOSSES",
    "ClassLoss",
    "MetricLoss",
    "MultiSimilarityLoss",
    "TripletMarginLoss",
    "create",
    "names",
]
