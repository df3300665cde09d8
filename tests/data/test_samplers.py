"""P x K samplers: coverage per epoch, batch shape, determinism, ranks, super-classes."""

from __future__ import annotations

import numpy as np
import pytest

from deepembed.data.samplers import (
    DistributedPKSampler,
    HierarchicalPKSampler,
    PKSampler,
    RandomBatchSampler,
)
from deepembed.errors import ConfigError


def uneven_labels(seed: int = 0, classes: int = 40) -> np.ndarray:
    """Class sizes 1..60, shuffled rows: small classes, remainders, one class much larger."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, classes)
    sizes[0] = 60
    return rng.permutation(np.repeat(np.arange(classes), sizes))


def check_batches(batches: list[list[int]], labels: np.ndarray, p: int, k: int) -> None:
    for batch in batches:
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(batch) == p * k and len(classes) == p and (counts == k).all()


def test_every_image_once_when_classes_divide_evenly() -> None:
    labels = np.repeat(np.arange(12), 8)  # 12 classes x 2 chunks of K=4, P=3 -> 8 batches
    sampler = PKSampler(labels, classes_per_batch=3, images_per_class=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 8
    check_batches(batches, labels, 3, 4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(labels)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uneven_classes_every_image_at_least_once_repeats_bounded(seed: int) -> None:
    labels = uneven_labels(seed)
    p, k = 5, 4
    sampler = PKSampler(labels, p, k, seed=seed)
    batches = sampler.plan(0)
    check_batches(batches, labels, p, k)
    seen = np.bincount(np.concatenate(batches), minlength=len(labels))
    assert (seen >= 1).all()  # PML's MPerClassSampler misses images (its issue #684)
    # repeats only from topping up each class's last chunk and the last batches' slots
    counts = np.bincount(labels)
    top_up = (-counts % k).sum() + len(batches) * p * k - (-(-counts // k)).sum() * k
    assert seen.sum() - len(labels) == top_up
    assert len(batches) == len(sampler)


def test_peer_sampler_misses_images_ours_does_not() -> None:
    from pytorch_metric_learning.samplers import MPerClassSampler

    labels = uneven_labels(3)
    peer = list(MPerClassSampler(labels, m=4, batch_size=20, length_before_new_iter=len(labels)))
    ours = np.concatenate(PKSampler(labels, 5, 4, seed=3).plan(0))
    assert len(np.unique(peer)) < 0.9 * len(labels)
    assert len(np.unique(ours)) == len(labels)


def test_deterministic_per_seed_and_epoch() -> None:
    labels = uneven_labels()
    a, b = PKSampler(labels, 4, 3, seed=7), PKSampler(labels, 4, 3, seed=7)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b) and list(b) == a.plan(1)
    assert list(a) != PKSampler(labels, 4, 3, seed=8).plan(0)


def test_small_class_policies() -> None:
    labels = np.array([0] * 2 + [1] * 5 + [2] * 6 + [3] * 4 + [4] * 1)
    repeat = PKSampler(labels, 2, 3, small_classes="repeat").plan(0)
    check_batches(repeat, labels, 2, 3)
    assert (np.bincount(np.concatenate(repeat), minlength=len(labels)) >= 1).all()
    drop = np.concatenate(PKSampler(labels, 2, 3, small_classes="drop").plan(0))
    assert set(labels[drop]) == {1, 2, 3}  # classes 0 and 4 have fewer than K=3 images
    assert set(np.flatnonzero(labels >= 1)[:-1]) <= set(drop.tolist())
    with pytest.raises(ConfigError, match="only 1 classes with >= 6 images"):
        PKSampler(labels, 2, 6, small_classes="drop")
    with pytest.raises(ConfigError, match="small_classes must be one of"):
        PKSampler(labels, 2, 3, small_classes="pad")
    with pytest.raises(ConfigError, match="only 5 classes"):
        PKSampler(labels, 6, 2)


def test_a_dominant_class_still_fits() -> None:
    labels = np.array([0] * 40 + [1] * 4 + [2] * 4)  # class 0 needs 10 batches with K=4
    batches = PKSampler(labels, 2, 4).plan(0)
    check_batches(batches, labels, 2, 4)
    assert len(batches) == 10 and set(np.concatenate(batches)) == set(range(48))


@pytest.mark.parametrize("world_size", [2, 3])
def test_distributed_ranks_get_distinct_batches_of_one_plan(world_size: int) -> None:
    labels = uneven_labels(4)
    ranks = [
        DistributedPKSampler(labels, 4, 4, seed=2, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0])
    plan = ranks[0].plan(0)
    assert len(plan) % world_size == 0
    dealt = sorted(tuple(b) for batches in per_rank for b in batches)
    assert dealt == sorted(tuple(b) for b in plan)  # a partition of the same plan
    assert (np.bincount(np.concatenate(plan), minlength=len(labels)) >= 1).all()
    check_batches(plan, labels, 4, 4)
    with pytest.raises(ConfigError, match="rank 2 is not in"):
        DistributedPKSampler(labels, 4, 4, rank=2, world_size=2)


def test_distributed_defaults_to_a_single_process() -> None:
    labels = uneven_labels()
    assert list(DistributedPKSampler(labels, 4, 4)) == list(PKSampler(labels, 4, 4))


def test_hierarchical_batches_span_few_super_classes() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.integers(2, 12, 60)
    labels = np.repeat(np.arange(60), sizes)
    supers = (np.arange(60) % 6)[labels]  # 6 super-classes of 10 classes
    sampler = HierarchicalPKSampler(labels, supers, 6, 2, super_classes_per_batch=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    check_batches(batches, labels, 6, 2)
    for batch in batches:
        owners, per_owner = np.unique(supers[batch], return_counts=True)
        assert len(owners) == 2 and (per_owner == 6).all()  # 3 classes x 2 images each
    assert (np.bincount(np.concatenate(batches), minlength=len(labels)) >= 1).all()
    assert batches == HierarchicalPKSampler(labels, supers, 6, 2, 2, seed=1).plan(0)
    two = HierarchicalPKSampler(labels, supers, 6, 2, 2, seed=1, rank=1, world_size=2)
    assert len(two.plan(0)) % 2 == 0 and list(two) == two.plan(0)[1::2]
    assert len(two) == len(two.plan(0)) // 2


def test_hierarchical_rejects_inconsistent_super_labels() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ConfigError, match="spans super-classes"):
        HierarchicalPKSampler(labels, np.array([0, 1, 0, 0, 1, 1, 1, 1]), 2, 2, 2)
    with pytest.raises(ConfigError, match="multiple of"):
        HierarchicalPKSampler(labels, labels // 2, 3, 2, 2)
    with pytest.raises(ConfigError, match="needs >= 2 super-classes of >= 2 classes"):
        HierarchicalPKSampler(labels, np.array([0, 0, 0, 0, 0, 0, 1, 1]), 4, 2, 2)


def test_random_batches_cover_every_image_once_with_distinct_topped_up_batches() -> None:
    sampler = RandomBatchSampler(23, 5, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    assert all(len(b) == 5 and len(set(b)) == 5 for b in batches)
    seen = np.concatenate(batches)
    assert set(seen.tolist()) == set(range(23)) and len(seen) == 25  # 2 top-ups in the last
    assert batches == list(RandomBatchSampler(23, 5, seed=3))  # (seed, epoch) decides
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_random_batches_are_shared_out_over_ranks() -> None:
    whole = RandomBatchSampler(40, 4, seed=0, world_size=3).plan(0)  # 10 batches -> 12
    parts = [list(RandomBatchSampler(40, 4, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert len({len(p) for p in parts}) == 1 and sum(map(len, parts)) == len(whole) == 12
    assert sorted(b for p in parts for b in p) == sorted(whole)


def test_random_batches_larger_than_the_training_set_are_refused() -> None:
    with pytest.raises(ConfigError, match="at most the 3 training images"):
        RandomBatchSampler(3, 4)
