"""Miners by name: `create(name, **params)`, `names()`; they return typed Pairs or Triplets."""

from __future__ import annotations

from typing import Any

from deepembed.miners.base import Miner, Pairs, Triplets, label_masks
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner
from deepembed.registry import Registry

MINERS: Registry[Miner] = Registry("miner")
MINERS.register("multi_similarity")(MultiSimilarityMiner)
MINERS.register("batch_hard")(BatchHardMiner)


def create(name: str, **params: Any) -> Miner:
    """A miner by registry name."""
    return MINERS.create(name, **params)


def names() -> list[str]:
    """Registered miner names."""
    return MINERS.names()


__all__ = ["MINERS", "Miner", "Pairs", "Triplets", "create", "label_masks", "names"]
