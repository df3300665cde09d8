"""Pair miners."""

from __future__ import annotations

import torch

from deepembed.distances import pairwise_similarity
from deepembed.miners.base import MINERS, MaskMiner, Pairs


@MINERS.register("multi_similarity")
class MultiSimilarityMiner(MaskMiner):
    """Multi-similarity pair mining (Wang et al. 2019), on cosine similarity.

    Keeps negative pairs more similar than the anchor's least similar positive minus
    `epsilon`, and positive pairs less similar than its most similar negative plus `epsilon`.
    """

    produces = Pairs

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon

    def mine_against(
        self,
        embeddings: torch.Tensor,
        ref_emb: torch.Tensor,
        pos: torch.Tensor,
        neg: torch.Tensor,
    ) -> Pairs:
        sim = pairwise_similarity(embeddings, ref_emb)  # (B, M)
        inf = torch.finfo(sim.dtype).max
        hardest_pos = sim.masked_fill(~pos, inf).amin(1, keepdim=True)  # (B, 1) least similar
        hardest_neg = sim.masked_fill(~neg, -inf).amax(1, keepdim=True)  # (B, 1) most similar
        keep_neg = neg & (sim + self.epsilon > hardest_pos)
        keep_pos = pos & (sim - self.epsilon < hardest_neg)
        return Pairs.from_masks(keep_pos, keep_neg)
