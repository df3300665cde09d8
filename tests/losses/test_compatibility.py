"""Which loss takes which miner output, written down once: the losses' declarations, their
behaviour and the trainer's up-front check must all agree with this table."""

from __future__ import annotations

import pytest
import torch

import deepembed.losses
import deepembed.miners
from deepembed.config import load_config
from deepembed.errors import ConfigError
from deepembed.losses.hashing import QuantizedLoss, is_hashing
from deepembed.miners import Pairs, Triplets
from deepembed.training.objective import build_objective, check_objective
from tests.losses.test_registry import accepts, make_batch

P, T = Pairs, Triplets
# loss -> the mined types it can be restricted to; () = class losses, which take no miner
TAKES: dict[str, tuple[type, ...]] = {
    "contrastive": (P,),
    "multi_similarity": (P,),
    "binomial_deviance": (P,),
    "circle": (P,),
    "lifted_structure": (P,),
    "generalized_lifted_structure": (P,),
    "ranked_list": (P,),
    "npair": (P, T),
    "nca": (P, T),
    "triplet": (T,),
    "soft_margin_triplet": (T,),
    "ratio_triplet": (T,),
    "margin": (T,),
    "proxy_nca": (),
    "proxy_anchor": (),
    "soft_triple": (),
    "normalized_softmax": (),
    "cosface": (),
    "arcface": (),
    "sphereface": (),
    "subcenter_arcface": (),
    # deep hashing (losses on relaxed codes)
    "dsh": (P,),
    "dpsh": (P,),
    "hashnet": (P,),
    "dch": (P,),
    "dtsh": (T,),
    "csq": (),
    "greedy_hash": (),
    "orthohash": (),
}
GIVES: dict[str, type] = {
    "multi_similarity": P,
    "batch_all": T,
    "batch_hard": T,
    "semi_hard": T,
    "hardest_negative": T,
    "random_negative": T,
    "distance_weighted": T,
}
# losses a cross-batch memory (loss.memory_size) can wrap: pair losses with a pair_loss form
MEMORY = {
    "contrastive",
    "multi_similarity",
    "binomial_deviance",
    "circle",
    "lifted_structure",
    "generalized_lifted_structure",
    "nca",
    "dsh",
    "dpsh",
    "hashnet",
    "dch",
}


def test_the_table_covers_every_registered_component() -> None:
    assert set(TAKES) == set(deepembed.losses.names())
    assert set(GIVES) == set(deepembed.miners.names())


@pytest.mark.parametrize("name", list(TAKES))
def test_losses_declare_what_the_table_says(name: str) -> None:
    cls = deepembed.losses.LOSSES.get(name)
    assert set(cls.accepts) == set(TAKES[name])  # type: ignore[attr-defined]
    assert cls.needs_classes == (TAKES[name] == ())  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", list(GIVES))
def test_miners_declare_and_return_what_the_table_says(name: str) -> None:
    miner = deepembed.miners.create(name)
    assert type(miner).produces is GIVES[name]
    emb, labels = make_batch(seed=3)
    assert isinstance(miner(emb, labels), GIVES[name])


@pytest.mark.parametrize("name", list(TAKES))
@pytest.mark.parametrize("kind", [P, T])
def test_losses_behave_as_declared(name: str, kind: type) -> None:
    """A declared type gives a loss; any other is a TypeError naming what the loss takes."""
    idx = torch.tensor([0, 4])
    mined = P(idx, idx + 1, idx, idx + 2) if kind is P else T(idx, idx + 1, idx + 2)
    assert accepts(name, mined) == (kind in TAKES[name])


def config(loss: str, miner: str, memory: int = 0, head: str = ""):
    """mnist30 with `loss`, `miner` and a memory; hashing losses get a hash head."""
    head = head or ("hash" if is_hashing(deepembed.losses.LOSSES.get(loss)) else "embedding")
    return load_config(
        "configs/mnist30.yaml",
        [
            f"loss.name={loss}",
            f"miner.name={miner}",
            f"loss.memory_size={memory}",
            f"model.head={head}",
            "model.bits=8",
        ],
    )


@pytest.mark.parametrize("loss", ["dsh", "csq", "triplet"])
def test_hashing_losses_and_heads_must_fit(loss: str) -> None:
    """A hashing loss on a float head is refused, and a float metric loss on a hash head
    unless it carries the quantization regulariser; each error names both keys."""
    hashing = is_hashing(deepembed.losses.LOSSES.get(loss))
    with pytest.raises(ConfigError) as error:
        check_objective(config(loss, "", head="embedding" if hashing else "hash"))
    assert f"loss.name={loss!r}" in str(error.value) and "model.head=" in str(error.value)
    if not hashing:
        quantized = load_config(
            "configs/mnist30.yaml",
            [
                f"loss.name={loss}",
                "miner.name=",
                "model.head=hash",
                "model.bits=16",
                "loss.quantization_weight=0.1",
            ],
        )
        check_objective(quantized)
        loss_fn, _ = build_objective(quantized, 4, 16, total_steps=100)
        assert isinstance(loss_fn, QuantizedLoss) and loss_fn.ramp_steps == 50


@pytest.mark.parametrize("loss", list(TAKES))
@pytest.mark.parametrize("miner", ["", *GIVES])
def test_the_trainer_checks_the_table_before_running(loss: str, miner: str) -> None:
    fits = miner == "" or GIVES[miner] in TAKES[loss]
    if fits:
        check_objective(config(loss, miner))
        _, built_miner = build_objective(config(loss, miner), 4, 8)
        assert (built_miner is None) == (miner == "")
    else:
        with pytest.raises(ConfigError) as error:
            check_objective(config(loss, miner))
        assert f"miner.name={miner!r}" in str(error.value)
        assert f"loss.name={loss!r}" in str(error.value)


@pytest.mark.parametrize("loss", list(TAKES))
@pytest.mark.parametrize("miner", ["", "multi_similarity", "batch_hard"])
def test_the_memory_takes_pair_losses_and_pair_miners(loss: str, miner: str) -> None:
    fits = loss in MEMORY and miner != "batch_hard"
    if fits:
        loss_fn, built_miner = build_objective(config(loss, miner, memory=64), 4, 8)
        assert built_miner is None and (loss_fn.miner is not None) == bool(miner)
    else:
        with pytest.raises(ConfigError, match="memory"):
            check_objective(config(loss, miner, memory=64))
