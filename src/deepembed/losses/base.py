"""The MetricLoss base class: input validation and the call signature shared by all losses."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from deepembed.miners.base import Pairs, Triplets
from deepembed.registry import Registry


class MetricLoss(nn.Module):
    """Called as `loss(embeddings (B, D), labels (B,), mined=None) -> scalar`.

    `mined` restricts the loss to a miner's pairs or triplets; None uses every valid tuple
    of the batch. Subclasses implement `compute` with validated tensors on one device.

    Each loss declares what it takes, so a trainer checks a configuration before running:
    `accepts` lists the mined types it can be restricted to (empty: no miner), and
    `needs_classes` says that it is built with `num_classes` and `embedding_size`.
    """

    accepts: ClassVar[tuple[type, ...]] = ()
    needs_classes: ClassVar[bool] = False

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mined: Pairs | Triplets | None = None,
    ) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise ValueError(
                f"embeddings must be (batch, dim), got shape {tuple(embeddings.shape)}"
            )
        labels = torch.as_tensor(labels, device=embeddings.device)
        if labels.shape != (embeddings.shape[0],):
            raise ValueError(f"labels must be ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        # Pairwise math in float32 at least: float16 exp/logsumexp would overflow.
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        if mined is not None and not isinstance(mined, self.accepts):
            raise TypeError(f"{describe_accepts(type(self))}, got {type(mined).__name__}")
        return self.compute(embeddings, labels, mined)

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def zero(embeddings: torch.Tensor) -> torch.Tensor:
        """A zero loss still connected to the graph (so backward() works on tuple-free batches)."""
        return embeddings.sum() * 0.0


class ClassLoss(MetricLoss):
    """A loss with learned per-class parameters (proxies or class weights).

    Labels must be class indices in [0, num_classes): the trainer maps a dataset's labels to
    contiguous indices before training. The learned tensor is `proxies` (proxy losses) or
    `weight` (margin-softmax losses), shape (num_classes * per_class, embedding_size).
    """

    needs_classes: ClassVar[bool] = True

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(
                f"num_classes and embedding_size must be >= 1, got {num_classes}, {embedding_size}"
            )
        self.num_classes, self.embedding_size = num_classes, embedding_size

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        mined: Pairs | Triplets | None = None,
    ) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=embeddings.device)
        if embeddings.ndim == 2 and embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have dim {embeddings.shape[1]}, the loss was built for "
                f"embedding_size={self.embedding_size}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must be class indices in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return super().forward(embeddings, labels, mined)


def describe_accepts(loss_cls: type[MetricLoss]) -> str:
    """What a loss class takes from a miner, in words: "TripletMarginLoss takes Triplets"."""
    taken = " or ".join(t.__name__ for t in loss_cls.accepts) or "no mined tuples"
    return f"{loss_cls.__name__} takes {taken}"


LOSSES: Registry[MetricLoss] = Registry("loss")
