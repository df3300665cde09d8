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
