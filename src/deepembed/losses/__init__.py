"""Losses by name: `create(name, **params)`, `names()`; loss(embeddings, labels, mined)."""

from __future__ import annotations

from deepembed.losses.base import MetricLoss
from deepembed.losses.pair import MultiSimilarityLoss
from deepembed.losses.triplet import TripletMarginLoss
from deepembed.registry import Registry

LOSSES: Registry[MetricLoss] = Registry("loss")
LOSSES.register("multi_similarity")(MultiSimilarityLoss)
LOSSES.register("triplet")(TripletMarginLoss)


create = LOSSES.create  # create(name, **params), PML's parameter names
names = LOSSES.names  # sorted registered names

__all__ = ["LOSSES", "MetricLoss", "create", "names"]
