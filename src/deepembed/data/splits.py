"""Class-disjoint splits: halves of a class list, and a seeded validation split of train classes.

Hyper-parameters and checkpoints are chosen on a validation split carved from the training
classes, never on the test classes (choosing the best epoch on test queries inflates results).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import numpy as np

from deepembed.errors import DataError


class LabelledDataset(Protocol):
    """What the split functions need: labels and row selection."""

    labels: np.ndarray

    def subset(self, indices: np.ndarray) -> LabelledDataset: ...


D = TypeVar("D", bound=LabelledDataset)


def class_halves(classes: Sequence[str], split: str) -> list[str]:
    """Classes of `split` when a dataset has no split of its own: train = the first half of
    `classes` in the given order (the larger half when odd), test = the rest, all = all."""
    ordered = list(classes)
    half = (len(ordered) + 1) // 2
    if split == "train":
        return ordered[:half]
    if split == "test":
        return ordered[half:]
    if split == "all":
        return ordered
    raise DataError(f"unknown split {split!r}; known: train, test, all")


def validation_split(dataset: D, fraction: float = 0.2, seed: int = 0) -> tuple[D, D]:
    """(train, validation): a seeded `fraction` of the classes (at least one) held out whole.

    Class-disjoint like the benchmarks' test split, so validation measures the same thing.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    classes = np.unique(dataset.labels)
    if len(classes) < 2:
        raise DataError(f"a validation split needs at least 2 classes, got {len(classes)}")
    n_val = min(len(classes) - 1, max(1, round(fraction * len(classes))))
    held_out = np.random.default_rng(seed).choice(classes, n_val, replace=False)
    is_val = np.isin(dataset.labels, held_out)
    return (
        dataset.subset(np.flatnonzero(~is_val)),  # type: ignore[return-value]
        dataset.subset(np.flatnonzero(is_val)),  # type: ignore[return-value]
    )


HASHING_SPLITS = ("train", "val", "query", "database")


def hashing_split(
    dataset: D, query_per_class: int, train_per_class: int, val_per_class: int = 0, seed: int = 0
) -> dict[str, D]:
    """The seen-class protocol of the deep-hashing literature (CIFAR-10's 1k/5k split):
    per class, a seeded `query_per_class` queries, `train_per_class` training and
    `val_per_class` validation items; every other item is the database. Queries and the
    database share their classes; the validation items (for choosing the epoch, never the
    queries) are neither queries nor database."""
    rng = np.random.default_rng(seed)
    counts = (query_per_class, train_per_class, val_per_class)
    picked: dict[str, list[np.ndarray]] = {name: [] for name in HASHING_SPLITS}
    for c in np.unique(dataset.labels):
        rows = rng.permutation(np.flatnonzero(dataset.labels == c))
        if len(rows) <= sum(counts):
            raise DataError(
                f"class {c} has {len(rows)} items; the hashing protocol needs more than "
                f"{query_per_class} query + {train_per_class} train + {val_per_class} "
                f"validation items per class (data.hash_*_per_class)"
            )
        q, t, v = np.cumsum(counts)
        picked["query"].append(rows[:q])
        picked["train"].append(rows[q:t])
        picked["val"].append(rows[t:v])
        picked["database"].append(rows[v:])
    return {
        name: dataset.subset(np.sort(np.concatenate(parts)))  # type: ignore[misc]
        for name, parts in picked.items()
    }


def per_class_holdout(dataset: D, per_class: int, seed: int = 0) -> tuple[D, D]:
    """(rest, held out): a seeded `per_class` items of every class held out (a validation
    split of the same classes, for protocols whose queries share the training classes)."""
    rng = np.random.default_rng(seed)
    held = [
        rng.permutation(np.flatnonzero(dataset.labels == c))[:per_class]
        for c in np.unique(dataset.labels)
    ]
    is_held = np.zeros(len(dataset.labels), bool)
    is_held[np.concatenate(held)] = True
    return (
        dataset.subset(np.flatnonzero(~is_held)),  # type: ignore[return-value]
        dataset.subset(np.flatnonzero(is_held)),  # type: ignore[return-value]
    )
