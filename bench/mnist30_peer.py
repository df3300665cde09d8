"""Same recipe, two implementations: our multi-similarity loss + miner vs PML's, on mnist30.

Everything else (data, sampler, model, optimiser, schedule, seed, evaluation) is shared, so
the difference in quality and time is the loss + miner's alone. Prints both and the ratio.

    .venv/bin/python bench/mnist30_peer.py [section.key=value ...]
"""

from __future__ import annotations

import sys
import time

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from deepembed import losses, miners
from deepembed.config import load_config
from deepembed.losses.base import MetricLoss
from deepembed.miners.base import Miner, Pairs, Triplets
from deepembed.training import train


class PMLMultiSimilarityLoss(MetricLoss):
    """PML's MultiSimilarityLoss behind our call signature."""

    def __init__(self, **params: float) -> None:
        super().__init__()
        self.inner = pml_losses.MultiSimilarityLoss(**params)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        if isinstance(mined, Triplets):
            raise TypeError("pairs only")
        tuples = (
            None
            if mined is None
            else (mined.anchor_pos, mined.positive, mined.anchor_neg, mined.negative)
        )
        return self.inner(embeddings, labels, tuples)


class PMLMultiSimilarityMiner(Miner):
    """PML's MultiSimilarityMiner returning our typed Pairs."""

    def __init__(self, **params: float) -> None:
        super().__init__()
        self.inner = pml_miners.MultiSimilarityMiner(**params)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs:
        return Pairs(*self.inner(embeddings, labels))


def main(overrides: list[str]) -> None:
    losses.LOSSES.register("pml_multi_similarity")(PMLMultiSimilarityLoss)
    miners.MINERS.register("pml_multi_similarity")(PMLMultiSimilarityMiner)
    rows = []
    for who, name in (("deepembed", "multi_similarity"), ("pml", "pml_multi_similarity")):
        config = load_config(
            "configs/mnist30.yaml",
            [
                "output_dir=runs/bench",
                f"name={who}",
                f"loss.name={name}",
                f"miner.name={name}",
                "train.eval_every=0",
                *overrides,
            ],
        )
        start = time.perf_counter()
        result = train(config, progress=False)
        seconds = time.perf_counter() - start
        rows.append((who, result.metrics["recall@1"], result.metrics["map@r"], seconds))
        print(
            f"{who:<10} recall@1 {rows[-1][1]:.4f}  map@r {rows[-1][2]:.4f}  {seconds:.0f} s",
            flush=True,
        )
    print(f"time ratio pml / deepembed: {rows[1][3] / rows[0][3]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
