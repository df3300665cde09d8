"""Typed mining results and the Miner base classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

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
        """Pairs of the True entries of (B, M) masks."""
        a1, p = torch.nonzero(pos, as_tuple=True)
        a2, n = torch.nonzero(neg, as_tuple=True)
        return cls(a1, p, a2, n)

    def masks(
        self, batch_size: int, ref_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M) bool masks of the selected positive and negative pairs (M = B by default)."""
        shape = (batch_size, batch_size if ref_size is None else ref_size)
        pos = torch.zeros(shape, dtype=torch.bool, device=self.positive.device)
        neg = torch.zeros_like(pos)
        pos[self.anchor_pos, self.positive] = True
        neg[self.anchor_neg, self.negative] = True
        return pos, neg


class Triplets:
    """Triplets (anchor[i], positive[i], negative[i]); labels[anchor] == labels[positive].

    `Triplets.all_valid(pos, neg)` stands for every valid triplet of a batch without listing
    them (a P x K batch has B (K - 1) (B - K) of them, 117 million at B = 4096): `is_all` tells
    a loss that it may compute the all-triplets loss from the whole batch directly (the triplet
    loss does, in O(B^2) memory), and the index tensors are only built when first read.
    """

    __slots__ = ("_indices", "_neg", "_pos")

    def __init__(
        self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> None:
        self._indices: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = (
            anchor,
            positive,
            negative,
        )
        self._pos: torch.Tensor | None = None
        self._neg: torch.Tensor | None = None

    @classmethod
    def all_valid(cls, pos: torch.Tensor, neg: torch.Tensor) -> Triplets:
        """Every (a, p, n) with pos[a, p] and neg[a, n], for (B, M) bool masks; lazy."""
        out = cls.__new__(cls)
        out._indices, out._pos, out._neg = None, pos, neg
        return out

    @property
    def is_all(self) -> bool:
        """Whether these are all valid triplets of the batch (from `all_valid`)."""
        return self._pos is not None

    @property
    def anchor(self) -> torch.Tensor:
        return self.indices()[0]

    @property
    def positive(self) -> torch.Tensor:
        return self.indices()[1]

    @property
    def negative(self) -> torch.Tensor:
        return self.indices()[2]

    def indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anchor, positive, negative) index tensors, listed on first use when lazy."""
        if self._indices is None:
            assert self._pos is not None and self._neg is not None
            self._indices = _all_triplet_indices(self._pos, self._neg)
        return self._indices

    def __len__(self) -> int:
        if self._indices is None:
            assert self._pos is not None and self._neg is not None
            # sum over anchors of (#positives x #negatives), without listing them
            return int((self._pos.sum(1) * self._neg.sum(1)).sum())
        return len(self._indices[0])

    def __repr__(self) -> str:
        return f"Triplets(len={len(self)}{', all_valid' if self.is_all else ''})"


def _all_triplet_indices(
    pos: torch.Tensor, neg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors of every (a, p, n) with pos[a, p] & neg[a, n], in O(#triplets) memory
    (no (B, B, B) mask): each positive pair is repeated once per negative of its anchor."""
    a, p = torch.nonzero(pos, as_tuple=True)  # (P,) positive pairs, sorted by anchor
    _, n = torch.nonzero(neg, as_tuple=True)  # every anchor's negatives, row after row
    n_neg = neg.sum(1)  # (B,)
    first_neg = torch.cumsum(n_neg, 0) - n_neg  # (B,) offset of each anchor's run in n
    reps = n_neg[a]  # (P,) triplets per positive pair
    total = int(reps.sum())
    anchor = torch.repeat_interleave(a, reps, output_size=total)
    positive = torch.repeat_interleave(p, reps, output_size=total)
    pair_start = torch.cumsum(reps, 0) - reps  # (P,) offset of each pair's run in the output
    within = torch.arange(total, device=pos.device) - torch.repeat_interleave(
        pair_start, reps, output_size=total
    )  # (T,) rank of the negative within its anchor's run
    negative = n[first_neg[anchor] + within]
    return anchor, positive, negative


class Miner(nn.Module):
    """Chooses informative pairs or triplets of a batch; never part of the autograd graph.

    `produces` declares what it returns (Pairs or Triplets), so a loss/miner combination is
    checked against the loss's `accepts` before anything runs.
    """

    produces: ClassVar[type[Pairs] | type[Triplets]]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs | Triplets:
        with torch.no_grad():
            embeddings = embeddings.detach()
            if embeddings.dtype in (torch.float16, torch.bfloat16):  # distances in float32
                embeddings = embeddings.float()
            return self.mine(embeddings, torch.as_tensor(labels, device=embeddings.device))

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs | Triplets:
        raise NotImplementedError


class MaskMiner(Miner):
    """A miner that only looks at anchor-to-reference distances and label masks.

    `mine_against(embeddings (B, D), ref_emb (M, D), pos (B, M), neg (B, M))` selects among
    the (anchor, reference) pairs the masks allow; anchors index `embeddings`, positives and
    negatives index `ref_emb`. Called on a batch, the references are the batch itself with
    `label_masks`; a cross-batch memory passes its queue instead (and masks of its own).
    """

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs | Triplets:
        pos, neg = label_masks(labels)
        return self.mine_against(embeddings, embeddings, pos, neg)

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Pairs | Triplets:
        raise NotImplementedError


MINERS: Registry[Miner] = Registry("miner")
