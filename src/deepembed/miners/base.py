"""Typed mining results and the Miner base class."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepembed.registry import Registry


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) bool masks: positives (same label, diagonal excluded) and negatives."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


@dataclass(frozen=True)
class Pairs:
    """Positive pairs (anchor_pos[i], positive[i]), negative pairs (anchor_neg[j], negative[j])."""

    anchor_pos: torch.Tensor
    positive: torch.Tensor
    anchor_neg: torch.Tensor
    negative: torch.Tensor

    @classmethod
    def from_masks(cls, pos: torch.Tensor, neg: torch.Tensor) -> Pairs:
        """Pairs of the True entries of (B, B) masks."""
        a1, p = torch.nonzero(pos, as_tuple=True)
        a2, n = torch.nonzero(neg, as_tuple=True)
        return cls(a1, p, a2, n)

    def masks(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, B) bool masks of the selected positive and negative pairs."""
        pos = torch.zeros(batch_size, batch_size, dtype=torch.bool, device=self.positive.device)
        neg = torch.zeros_like(pos)
        pos[self.anchor_pos, self.positive] = True
        neg[self.anchor_neg, self.negative] = True
        return pos, neg


@dataclass(frozen=True)
class Triplets:
    """Triplets (anchor[i], positive[i], negative[i]); labels[anchor] == labels[positive]."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:
        return len(self.anchor)


class Miner(nn.Module):
    """Chooses informative pairs or triplets of a batch; never part of the autograd graph."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs | Triplets:
        with torch.no_grad():
            return self.mine(embeddings.detach(), labels.to(embeddings.device))

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs | Triplets:
        raise NotImplementedError


MINERS: Registry[Miner] = Registry("miner")
