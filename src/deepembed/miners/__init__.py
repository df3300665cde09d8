"""Miners by name: `create(name, **params)`, `names()`; they return typed Pairs or Triplets."""

from __future__ import annotations

from deepembed.miners.base import Miner, Pairs, Triplets, label_masks
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner
from deepembed.registry import Registry

MINERS: Registry[Miner] = Registry("miner")
MINERS.register("multi_similarity")(MultiSimilarityMiner)
MINERS.register("batch_hard")(BatchHardMiner)


create = MINERS.create  # create(name, **params), PML's parameter names
names = MINERS.names  # sorted registered names

__all__ = ["MINERS", "Miner", "Pairs", "Triplets", "create", "label_masks", "names"]
