"""The hashing protocol: seeded per-class query / train / validation counts, the rest the
database; datasets with their own query/database splits keep them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepembed import data
from deepembed.config import load_config
from deepembed.errors import DataError
from deepembed.training.build import open_splits
from tests.data.conftest import write_image


def pool(per_class: tuple[int, ...]) -> data.TensorImageDataset:
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)])
    return data.TensorImageDataset(np.zeros((len(labels), 1, 2, 2), np.uint8), labels)


def test_counts_per_class_disjoint_and_seeded() -> None:
    dataset = pool((20, 30, 25))
    parts = data.hashing_split(dataset, 3, 5, 2, seed=1)
    for name, n in (("query", 3), ("train", 5), ("val", 2)):
        assert np.bincount(parts[name].labels).tolist() == [n, n, n], name
    assert np.bincount(parts["database"].labels).tolist() == [10, 20, 15]
    ids = [set(parts[n].ids.tolist()) for n in data.splits.HASHING_SPLITS]
    assert sum(map(len, ids)) == len(dataset) and len(set().union(*ids)) == len(dataset)
    again = data.hashing_split(dataset, 3, 5, 2, seed=1)
    other = data.hashing_split(dataset, 3, 5, 2, seed=2)
    assert np.array_equal(again["query"].ids, parts["query"].ids)
    assert not np.array_equal(other["query"].ids, parts["query"].ids)


def test_a_class_too_small_for_the_protocol_is_named() -> None:
    with pytest.raises(DataError, match="class 1 has 8 items"):
        data.hashing_split(pool((20, 8)), 3, 5, 0)


def test_per_class_holdout() -> None:
    rest, held = data.per_class_holdout(pool((6, 9)), 2, seed=0)
    assert np.bincount(held.labels).tolist() == [2, 2] and len(rest) == 11
    assert not set(rest.ids.tolist()) & set(held.ids.tolist())


def test_mnist30_under_the_hashing_protocol() -> None:
    config = load_config(
        "configs/mnist30.yaml",
        ["data.protocol=hashing", "data.hash_query_per_class=10", "data.hash_train_per_class=20"],
    )
    splits = open_splits(config)
    assert np.bincount(splits.query.labels).tolist() == [10] * 30
    assert np.bincount(splits.train.labels).tolist() == [20] * 30
    assert splits.val is None and len(np.unique(splits.gallery.labels)) == 30
    everything = data.open("mnist30", split="all", transform=None)
    assert len(splits.query) + len(splits.train) + len(splits.gallery) == len(everything)


def test_a_csv_with_query_and_database_splits_keeps_them(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for j in range(24):
        write_image(tmp_path / f"{j}.png", seed=j)
        split = ("train", "train", "query", "database")[j % 4]
        rows.append(f"{j}.png,{j % 3},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    config = load_config(
        None,
        [
            "data.name=csv",
            f"data.root={tmp_path}",
            "data.protocol=hashing",
            "data.hash_val_per_class=1",
        ],
    )
    splits = open_splits(config)
    assert len(splits.query) == 6 and len(splits.gallery) == 6
    assert len(splits.train) == 9 and np.bincount(splits.val.labels).tolist() == [1, 1, 1]
