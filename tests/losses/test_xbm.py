"""Cross-batch memory against pytorch-metric-learning 2.9.0's CrossBatchMemory (float64)."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from deepembed.losses.base import MetricLoss
from deepembed.losses.pair import MultiSimilarityLoss
from deepembed.losses.triplet import TripletMarginLoss
from deepembed.losses.xbm import CrossBatchMemory
from deepembed.miners import Miner, Pairs, Triplets
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner
from tests.losses.oracle import assert_same

DIM = 8


def batches(
    steps: int, sizes: tuple[int, ...], seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive float64 batches; the classes drift from batch to batch, so the memory
    holds classes the current batch lacks and classes it shares."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        classes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        classes = classes[torch.randperm(len(classes), generator=gen)]
        centres = torch.randn(len(sizes) + steps, DIM, generator=gen, dtype=torch.float64)
        labels = classes + step
        noise = torch.randn(len(classes), DIM, generator=gen, dtype=torch.float64)
        out.append((centres[labels] + 0.7 * noise, labels * 3 - 5))
    return out


MS_PARAMS = [{}, {"alpha": 1.0, "beta": 20.0, "base": 0.3}]


@pytest.mark.parametrize("with_miner", [False, True], ids=["all_pairs", "ms_miner"])
@pytest.mark.parametrize("params", MS_PARAMS, ids=["default", "custom"])
@pytest.mark.parametrize(
    ("sizes", "memory"), [((3, 3, 3, 3), 30), ((2, 3, 5), 25)], ids=["pk", "uneven"]
)
def test_multi_similarity_memory_matches_pml(
    sizes: tuple[int, ...], memory: int, params: dict[str, float], with_miner: bool
) -> None:
    """Seven consecutive batches: the queue fills, wraps around mid-batch and keeps going;
    value and gradient match at every step."""
    ours = CrossBatchMemory(
        MultiSimilarityLoss(**params),
        DIM,
        memory,
        MultiSimilarityMiner(0.3) if with_miner else None,
    )
    theirs = pml_losses.CrossBatchMemory(
        pml_losses.MultiSimilarityLoss(**params),
        DIM,
        memory,
        pml_miners.MultiSimilarityMiner(0.3) if with_miner else None,
    )
    for emb, labels in batches(7, sizes, seed=1):
        assert_same(lambda e, y=labels: ours(e, y), lambda e, y=labels: theirs(e, y), emb)
    assert ours.filled and theirs.has_been_filled and ours.queue_idx == theirs.queue_idx > 0
    torch.testing.assert_close(ours.embedding_memory, theirs.embedding_memory)
    assert torch.equal(ours.label_memory, theirs.label_memory)


def test_memory_is_a_fifo_of_detached_embeddings() -> None:
    xbm = CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=10)
    seen_emb, seen_labels = [], []
    for step, (emb, labels) in enumerate(batches(4, (2, 2), seed=2)):
        emb.requires_grad_(True)
        xbm(emb, labels).backward()
        seen_emb.append(emb.detach())
        seen_labels.append(labels)
        size = min(4 * (step + 1), 10)
        assert (xbm.filled, xbm.queue_idx) == (size == 10, 4 * (step + 1) % 10)
    # rows 0..9 were written by steps 0 1 2 (0..1 twice) then 3 (2..5): the last 10 in order
    last = torch.cat(seen_emb)[-10:]
    rolled = torch.roll(xbm.embedding_memory, -xbm.queue_idx, 0)  # oldest first
    assert torch.equal(rolled, last)
    assert torch.equal(torch.roll(xbm.label_memory, -xbm.queue_idx), torch.cat(seen_labels)[-10:])
    assert not xbm.embedding_memory.requires_grad
    assert set(xbm.state_dict()) == set()  # the queue is not saved; MS has no parameters


def test_first_batch_value_is_the_plain_loss() -> None:
    """An empty queue holds only the batch itself: the same pairs as the plain loss."""
    emb, labels = batches(1, (4, 4, 4), seed=3)[0]
    xbm = CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=64)
    torch.testing.assert_close(xbm(emb, labels), MultiSimilarityLoss()(emb, labels))


def test_only_anchors_get_gradient() -> None:
    """The references are the detached queue: earlier batches get no gradient, the current
    one does, also where its only positives are in the memory (one row per class here)."""
    (emb1, labels1), (emb2, _) = batches(2, (3, 3), seed=4)
    xbm = CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=20)
    emb1.requires_grad_(True)
    xbm(emb1, labels1)
    emb2 = emb2[:2].clone().requires_grad_(True)
    loss = xbm(emb2, labels1[[0, 3]])  # two classes, one row each
    grad1, grad2 = torch.autograd.grad(loss, [emb1, emb2], allow_unused=True)
    assert grad1 is None and grad2 is not None and bool(grad2.abs().sum() > 0)
    assert not xbm.embedding_memory.requires_grad


def test_low_precision_and_dtype_switch() -> None:
    xbm = CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=32)
    expected = {torch.float16: torch.float32, torch.float32: torch.float32}
    for dtype in (torch.float16, torch.float32, torch.float64):
        emb, labels = batches(1, (4, 4), seed=5)[0]
        loss = xbm(emb.to(dtype).requires_grad_(True), labels)
        assert bool(torch.isfinite(loss)) and loss.dtype == expected.get(dtype, dtype)
    assert xbm.embedding_memory.dtype == torch.float64


class CountingPairLoss(MetricLoss):
    """A stand-in pair loss offering the `pair_loss` interface: counts the pairs it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, tuple[int, ...]]] = []

    def pair_loss(
        self, embeddings: torch.Tensor, ref_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> torch.Tensor:
        self.seen.append((int(pos.sum()), int(neg.sum()), tuple(pos.shape)))
        return (embeddings @ ref_emb.T)[pos | neg].sum()


def test_pair_loss_interface_gets_anchor_by_reference_masks() -> None:
    loss = CountingPairLoss()
    xbm = CrossBatchMemory(loss, DIM, memory_size=12)
    labels = torch.tensor([0, 0, 1, 1, 1])
    for _ in range(3):
        xbm(torch.randn(5, DIM), labels)
    # queue sizes 5, 10, 12
    # per anchor: same-class queue rows less its own copy; other-class rows
    assert loss.seen[0] == (2 * 1 + 3 * 2, 2 * 3 + 3 * 2, (5, 5))
    assert loss.seen[1] == (2 * 3 + 3 * 5, 2 * 6 + 3 * 4, (5, 10))
    assert loss.seen[2][2] == (5, 12)


class PlainMiner(Miner):
    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Pairs:
        raise AssertionError("not called")


def test_rejects_what_it_cannot_use() -> None:
    with pytest.raises(TypeError, match="TripletMarginLoss"):
        CrossBatchMemory(TripletMarginLoss(), DIM)
    with pytest.raises(TypeError, match="PlainMiner"):
        CrossBatchMemory(MultiSimilarityLoss(), DIM, miner=PlainMiner())
    with pytest.raises(ValueError, match="memory_size"):
        CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=0)
    xbm = CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=8)
    emb, labels = torch.randn(6, DIM), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(TypeError, match="Pairs"):
        xbm(emb, labels, Pairs(*(torch.zeros(0, dtype=torch.long),) * 4))
    with pytest.raises(ValueError, match="embedding_size"):
        xbm(torch.randn(6, DIM + 1), labels)
    with pytest.raises(ValueError, match="memory_size=8"):
        xbm(torch.randn(9, DIM), torch.zeros(9, dtype=torch.long))
    triplet_miner = CrossBatchMemory(MultiSimilarityLoss(), DIM, 8, BatchHardMiner())
    with pytest.raises(TypeError, match="Triplets"):
        triplet_miner(emb, labels)
    assert isinstance(BatchHardMiner()(emb, labels), Triplets)
