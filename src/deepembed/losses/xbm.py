"""Cross-batch memory (XBM): a queue of past embeddings for any pair-based loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepembed.losses.base import ClassLoss, MetricLoss
from deepembed.miners.base import MaskMiner, Miner, Pairs, Triplets

# loss(embeddings (B, D), ref_emb (M, D), pos (B, M), neg (B, M)) -> scalar
ReferenceForm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def supports_memory(loss: MetricLoss | type[MetricLoss]) -> bool:
    """Whether a loss (instance or class) can be used with a memory: a pair loss that offers
    `pair_loss`, and not a class loss (its proxies already span every class)."""
    cls = loss if isinstance(loss, type) else type(loss)
    return callable(getattr(cls, "pair_loss", None)) and not issubclass(cls, ClassLoss)


def reference_form(loss: MetricLoss) -> ReferenceForm:
    """The loss as a function of anchors, references and (B, M) pair masks.

    A pair loss offers it as a method `pair_loss(embeddings, ref_emb, pos, neg)`: its value on
    the (anchor i, reference j) pairs with pos[i, j] (same class) or neg[i, j] (different),
    reduced as the loss itself reduces (multi_similarity, contrastive, binomial_deviance,
    circle, lifted_structure, generalized_lifted_structure, nca). Losses without one cannot
    use a memory.
    """
    if supports_memory(loss):
        return loss.pair_loss  # type: ignore[attr-defined]
    raise TypeError(
        f"cross-batch memory needs a pair loss with a pair_loss(embeddings, ref_emb, pos, neg) "
        f"method; {type(loss).__name__} has none"
    )


class CrossBatchMemory(MetricLoss):
    """Cross-batch memory (Wang et al. 2020): the loss of each batch against a queue of the
    last `memory_size` embeddings, as in pytorch-metric-learning's CrossBatchMemory.

    Each call first enqueues the batch (detached, oldest rows overwritten first), then
    computes the wrapped pair loss with the batch as anchors and the whole queue, the batch's
    own copy included, as references (B x M pairs); an anchor is never paired with its own
    copy. Gradients flow through the anchors only: the queue is detached. The official XBM
    code instead adds the plain in-batch loss to a weighted memory loss; PML's single loss
    already contains the in-batch pairs (against the detached copies).

    `miner`, if given, must be a `MaskMiner` returning Pairs; it mines the (B, M) pairs. Unlike
    PML, which removes the anchor-to-itself pairs after mining, the self pairs are excluded
    before mining: the same choice for any anchor that has another positive in the queue.
    The queue is not part of the state dict: a resumed run refills it within M / B steps.

    Against PML (tested): multi_similarity, contrastive, circle and
    generalized_lifted_structure give PML's value and gradient. lifted_structure is
    one-sided here (J_ij has the anchor's negatives only; PML reads the negatives of the
    batch row whose index equals the queue row j). nca leaves the anchor's own copy out of
    the softmax (PML keeps it, as a positive at distance 0). binomial_deviance has no PML
    counterpart.
    """

    def __init__(
        self,
        loss: MetricLoss,
        embedding_size: int,
        memory_size: int = 1024,
        miner: Miner | None = None,
    ) -> None:
        super().__init__()
        self._reference_loss = reference_form(loss)
        if miner is not None and not isinstance(miner, MaskMiner):
            raise TypeError(
                f"cross-batch memory needs a miner that can mine against references "
                f"(a MaskMiner), not {type(miner).__name__}"
            )
        if embedding_size < 1 or memory_size < 1:
            raise ValueError(
                f"embedding_size and memory_size must be >= 1, got {embedding_size}, {memory_size}"
            )
        self.loss, self.miner = loss, miner
        self.embedding_size, self.memory_size = embedding_size, memory_size
        # persistent: a training checkpoint carries the memory, so a resumed run continues it
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_size))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.queue_idx, self.filled = 0, False

    def get_extra_state(self) -> dict[str, int | bool]:
        """The queue position, saved with the buffers in state_dict()."""
        return {"queue_idx": self.queue_idx, "filled": self.filled}

    def set_extra_state(self, state: dict[str, int | bool]) -> None:
        self.queue_idx, self.filled = int(state["queue_idx"]), bool(state["filled"])

    def reset_queue(self) -> None:
        """Empty the memory."""
        self.queue_idx, self.filled = 0, False

    def compute(
        self, embeddings: torch.Tensor, labels: torch.Tensor, mined: Pairs | Triplets | None
    ) -> torch.Tensor:
        batch, dim = embeddings.shape
        if dim != self.embedding_size:
            raise ValueError(
                f"embeddings have dim {dim}, the memory was built for "
                f"embedding_size={self.embedding_size}"
            )
        if batch > self.memory_size:
            raise ValueError(f"batch of {batch} exceeds memory_size={self.memory_size}")
        slots = self._enqueue(embeddings.detach(), labels)  # (B,) queue rows of this batch
        size = self.memory_size if self.filled else self.queue_idx
        ref_emb, ref_labels = self.embedding_memory[:size], self.label_memory[:size]
        pos = labels[:, None] == ref_labels[None, :]  # (B, M)
        neg = ~pos
        pos[torch.arange(batch, device=pos.device), slots] = False  # not its own positive
        if self.miner is not None:
            with torch.no_grad():
                pairs = self.miner.mine_against(embeddings.detach(), ref_emb, pos, neg)
            if not isinstance(pairs, Pairs):
                raise TypeError(f"cross-batch memory takes Pairs, not {type(pairs).__name__}")
            pos, neg = pairs.masks(batch, size)
        return self._reference_loss(embeddings, ref_emb, pos, neg)

    def _enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Write the batch over the oldest rows; return the (B,) rows it went to."""
        memory = self.embedding_memory
        if memory.device != embeddings.device or memory.dtype != embeddings.dtype:
            self.embedding_memory = memory.to(embeddings.device, embeddings.dtype)
            self.label_memory = self.label_memory.to(embeddings.device)
        slots = torch.arange(len(embeddings), device=embeddings.device)
        slots = (slots + self.queue_idx) % self.memory_size
        self.embedding_memory[slots] = embeddings
        self.label_memory[slots] = labels.long()
        end = self.queue_idx + len(embeddings)
        self.filled = self.filled or end >= self.memory_size
        self.queue_idx = end % self.memory_size
        return slots
