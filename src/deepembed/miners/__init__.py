"""Miners by name: `create(name, **params)`, `names()`; they return typed Pairs or Triplets.

Each family module registers its miners in MINERS on import.
"""

from __future__ import annotations

from deepembed.miners import pair, triplet  # noqa: F401
from deepembed.miners.base import MINERS, Miner, Pairs, Triplets, label_masks

create = MINERS.create  # create(name, **params), PML's parameter names
names = MINERS.names  # sorted registered names

__all__ = ["MINERS", "Miner", "Pairs", "Triplets", "create", "label_masks", "names"]
