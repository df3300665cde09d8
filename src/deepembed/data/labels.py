"""Class ids (N,) or a multi-label (N, C) 0/1 matrix: telling them apart, and refusing the
second where an operation needs one class per item (per-class splits, P x K batches)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepembed.errors import ConfigError


def is_multi_label(dataset: Any) -> bool:
    """Whether a dataset's (or a label array's) labels are a (N, C) multi-label matrix."""
    labels = getattr(dataset, "labels", dataset)
    return np.ndim(labels) == 2


def require_class_ids(dataset: Any, key: str) -> None:
    """ConfigError naming `key` when `dataset` has multi-label rows: what `key` configures
    draws images class by class, which needs exactly one class per item."""
    if is_multi_label(dataset):
        raise ConfigError(
            f"{key} works class by class and needs one label per image, but the dataset has "
            f"multi-label rows ({np.shape(dataset.labels)[1]} labels)"
        )
