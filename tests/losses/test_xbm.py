"""Cross-batch memory against pytorch-metric-learning 2.9.0's CrossBatchMemory (float64)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from deepembed.losses.base import MetricLoss
from deepembed.losses.listwise import (
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    NCALoss,
    NPairLoss,
    RankedListLoss,
)
from deepembed.losses.pair import (
    BinomialDevianceLoss,
    CircleLoss,
    ContrastiveLoss,
    MarginLoss,
    MultiSimilarityLoss,
)
from deepembed.losses.proxy import ProxyAnchorLoss
from deepembed.losses.triplet import TripletMarginLoss
from deepembed.losses.xbm import CrossBatchMemory
from deepembed.miners import Miner, Pairs, Triplets
from deepembed.miners.pair import MultiSimilarityMiner
from deepembed.miners.triplet import BatchHardMiner
from tests.losses.oracle import assert_same
from tests.losses.test_listwise_losses import paper_lifted_structure
from tests.losses.test_pair_losses import reference_binomial

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


# name -> (ours, PML's) on L2-normalised embeddings (PML's default distances normalise)
MATCHING_PML: dict[str, Callable[[], tuple[MetricLoss, torch.nn.Module]]] = {
    "contrastive": lambda: (
        ContrastiveLoss(0.2, 0.9),
        pml_losses.ContrastiveLoss(0.2, 0.9),
    ),
    "circle": lambda: (CircleLoss(0.25, 64.0), pml_losses.CircleLoss(0.25, 64.0)),
    "generalized_lifted_structure": lambda: (
        GeneralizedLiftedStructureLoss(0.6, 0.2),
        pml_losses.GeneralizedLiftedStructureLoss(0.6, 0.2),
    ),
}
WRAP = [((3, 3, 3, 3), 30), ((2, 3, 5), 25)]  # the queue wraps around mid-batch


def normalised(loss: Callable[..., torch.Tensor], labels: torch.Tensor) -> Callable:
    return lambda e: loss(F.normalize(e, dim=1), labels)


def run_steps(ours: CrossBatchMemory, theirs: torch.nn.Module, sizes: tuple[int, ...]) -> None:
    """Seven consecutive batches through both memories: value and gradient at every step."""
    for emb, labels in batches(7, sizes, seed=6):
        assert_same(normalised(ours, labels), normalised(theirs, labels), emb)
    assert ours.filled and ours.queue_idx > 0


@pytest.mark.parametrize("with_miner", [False, True], ids=["all_pairs", "ms_miner"])
@pytest.mark.parametrize("name", list(MATCHING_PML))
@pytest.mark.parametrize(("sizes", "memory"), WRAP, ids=["pk", "uneven"])
def test_pair_losses_memory_matches_pml(
    sizes: tuple[int, ...], memory: int, name: str, with_miner: bool
) -> None:
    loss, pml_loss = MATCHING_PML[name]()
    miner = MultiSimilarityMiner(0.3) if with_miner else None
    pml_miner = pml_miners.MultiSimilarityMiner(0.3) if with_miner else None
    ours = CrossBatchMemory(loss, DIM, memory, miner)
    theirs = pml_losses.CrossBatchMemory(pml_loss, DIM, memory, pml_miner)
    run_steps(ours, theirs, sizes)


# f(embeddings, labels, (a1, p, a2, n) with p, n indexing the memory, memory, memory labels)
PairFunction = Callable[..., torch.Tensor]


class QueueOracle(pml_losses.CrossBatchMemory):
    """PML's queue, pairs and self-pair removal around any function of them."""

    def __init__(self, fn: PairFunction, memory: int, miner: object = None) -> None:
        super().__init__(fn, DIM, memory, miner)

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        pass


def joined(fn: PairFunction) -> PairFunction:
    """fn on anchors and memory as one set, the pairs re-indexed into it: a square-batch
    oracle (PML's or a loop) sees exactly the (anchor, memory row) pairs."""

    def call(emb, labels, indices, mem, mem_labels):
        a1, p, a2, n = indices
        both = torch.cat([emb, mem])
        return fn(both, torch.cat([labels, mem_labels]), (a1, p + len(emb), a2, n + len(emb)))

    return call


@pytest.mark.parametrize("with_miner", [False, True], ids=["all_pairs", "ms_miner"])
@pytest.mark.parametrize("params", [{}, {"neg_margin": 0.6, "pos_margin": 0.2}])
@pytest.mark.parametrize(("sizes", "memory"), WRAP, ids=["pk", "uneven"])
def test_lifted_structure_memory_is_one_sided(
    sizes: tuple[int, ...], memory: int, params: dict[str, float], with_miner: bool
) -> None:
    """J_ij holds the anchor's negatives only (the memory lists none for its rows): PML's
    lifted structure and the paper's loops on the joined set, where no pair starts at a
    memory row, give exactly that."""
    miner = MultiSimilarityMiner(0.3) if with_miner else None
    pml_miner = pml_miners.MultiSimilarityMiner(0.3) if with_miner else None
    ours = CrossBatchMemory(LiftedStructureLoss(**params), DIM, memory, miner)
    theirs = QueueOracle(joined(pml_losses.LiftedStructureLoss(**params)), memory, pml_miner)
    run_steps(ours, theirs, sizes)
    if with_miner:  # the loops are slow; PML above covered the mined pairs
        return
    loops = QueueOracle(
        joined(
            lambda e, y, t: paper_lifted_structure(
                e,
                y,
                params.get("neg_margin", 1.0),
                "euclidean",
                params.get("pos_margin", 0.0),
                Pairs(*t),
            )
        ),
        memory,
        pml_miner,
    )
    ours.reset_queue()
    run_steps(ours, loops, sizes)


@pytest.mark.parametrize("with_miner", [False, True], ids=["all_pairs", "ms_miner"])
@pytest.mark.parametrize(("sizes", "memory"), WRAP, ids=["pk", "uneven"])
def test_binomial_deviance_memory_matches_loop(
    sizes: tuple[int, ...], memory: int, with_miner: bool
) -> None:
    """PML has no binomial deviance: the paper's pair loop over the (anchor, memory) pairs."""
    miner = MultiSimilarityMiner(0.3) if with_miner else None
    pml_miner = pml_miners.MultiSimilarityMiner(0.3) if with_miner else None

    def loop(emb: torch.Tensor, labels: torch.Tensor, t: tuple[torch.Tensor, ...]):
        pairs = list(zip(t[0].tolist(), t[1].tolist(), strict=True))
        pairs += zip(t[2].tolist(), t[3].tolist(), strict=True)
        return reference_binomial(emb, labels, pairs, 3.0, 0.4, 10.0)

    ours = CrossBatchMemory(BinomialDevianceLoss(3.0, 0.4, 10.0), DIM, memory, miner)
    run_steps(ours, QueueOracle(joined(loop), memory, pml_miner), sizes)


def loop_nca(
    emb: torch.Tensor,
    labels: torch.Tensor,
    indices: tuple[torch.Tensor, ...],
    mem: torch.Tensor,
    mem_labels: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """NCA anchor by anchor, the softmax over the anchor's listed memory rows."""
    a1, p, a2, n = indices
    total, count = emb.sum() * 0.0, 0
    for i in range(len(emb)):
        positives, negatives = p[a1 == i].tolist(), n[a2 == i].tolist()
        logits = torch.stack(
            [-scale * (emb[i] - mem[j]).pow(2).sum() for j in positives + negatives]
        )
        prob = torch.softmax(logits, 0)[: len(positives)].sum()
        if prob > 0:
            total, count = total - torch.log(prob), count + 1
    return total / count


@pytest.mark.parametrize("scale", [1.0, 4.0])
@pytest.mark.parametrize(("sizes", "memory"), WRAP, ids=["pk", "uneven"])
def test_nca_memory_leaves_own_copy_out_unlike_pml(
    sizes: tuple[int, ...], memory: int, scale: float
) -> None:
    """Ours: softmax over the memory less the anchor's own copy (loops). PML's NCALoss gets
    the memory as references and ignores the pairs, so its own copy (distance 0) stays in
    the softmax as a positive: our pair_loss with that copy in `pos` is PML's value."""
    ours = CrossBatchMemory(NCALoss(scale), DIM, memory)
    loops = QueueOracle(lambda *args: loop_nca(*args, scale), memory)
    run_steps(ours, loops, sizes)

    def with_self(emb, labels, indices, mem, mem_labels):
        pos = labels[:, None] == mem_labels[None, :]
        return NCALoss(scale).pair_loss(emb, mem, pos, ~pos)

    pml = pml_losses.CrossBatchMemory(pml_losses.NCALoss(scale), DIM, memory)
    with_self_queue = QueueOracle(with_self, memory)
    for emb, labels in batches(7, sizes, seed=6):
        assert_same(normalised(with_self_queue, labels), normalised(pml, labels), emb)
    emb, labels = batches(1, sizes, seed=7)[0]
    ours_value = ours(F.normalize(emb, dim=1), labels)
    assert not torch.allclose(ours_value, pml(F.normalize(emb, dim=1), labels))


FIRST_BATCH: dict[str, Callable[[], MetricLoss]] = {
    "multi_similarity": MultiSimilarityLoss,
    "contrastive": lambda: ContrastiveLoss(0.2, 0.9),
    "binomial_deviance": BinomialDevianceLoss,
    "circle": CircleLoss,
    "generalized_lifted_structure": GeneralizedLiftedStructureLoss,
    "nca": NCALoss,
}


@pytest.mark.parametrize("name", [*FIRST_BATCH, "lifted_structure"])
def test_first_batch_with_batch_sized_memory_is_the_plain_loss(name: str) -> None:
    """A fresh queue of the batch's size holds only the batch: the same pairs as the plain
    loss, so the same value (the gradient differs: references are detached). Not for lifted
    structure, whose memory form drops the positives' negatives (J_ij smaller)."""
    emb, labels = batches(1, (4, 3, 5), seed=8)[0]
    emb = F.normalize(emb, dim=1)
    make = FIRST_BATCH.get(name, LiftedStructureLoss)
    value = CrossBatchMemory(make(), DIM, memory_size=len(labels))(emb, labels)
    plain = make()(emb, labels)
    if name == "lifted_structure":
        assert 0 < value < plain
    else:
        torch.testing.assert_close(value, plain)


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
    # a training checkpoint carries the queue: a fresh memory loaded from it continues it
    state = xbm.state_dict()
    assert set(state) == {"embedding_memory", "label_memory", "_extra_state"}
    copy = CrossBatchMemory(MultiSimilarityLoss(), DIM, memory_size=10).double()
    copy.load_state_dict(state)
    assert (copy.queue_idx, copy.filled) == (xbm.queue_idx, xbm.filled)
    assert torch.equal(copy.embedding_memory, xbm.embedding_memory)


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


@pytest.mark.parametrize(
    "loss",
    [TripletMarginLoss(), MarginLoss(), NPairLoss(), RankedListLoss(), ProxyAnchorLoss(3, DIM)],
    ids=type,
)
def test_losses_without_pair_form_are_refused(loss: MetricLoss) -> None:
    with pytest.raises(TypeError, match=type(loss).__name__):
        CrossBatchMemory(loss, DIM)


def test_rejects_what_it_cannot_use() -> None:
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
