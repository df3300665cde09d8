"""Datasets, samplers and transforms. `open(name, root, split)` is the entry point."""

from __future__ import annotations

from deepembed.data.datasets import TensorImageDataset, collate
from deepembed.data.samplers import PKSampler
from deepembed.data.sources.mnist_family import SOURCES, open_class_disjoint
from deepembed.errors import DataError

DATASETS = ("mnist30", *SOURCES)


def open(
    name: str, root: str = "", split: str = "train", eval_per_source: int = 5000, seed: int = 0
) -> TensorImageDataset:
    """Open dataset `name` ("mnist30", "mnist", "fashion_mnist", "animal_mnist") split.

    The MNIST family follows the class-disjoint protocol: labels 0-4 of each source train,
    5-9 are the unseen test classes (a seeded sample of `eval_per_source` per source).
    """
    if name == "mnist30":
        return open_class_disjoint(SOURCES, root, split, eval_per_source, seed)
    if name in SOURCES:
        return open_class_disjoint((name,), root, split, eval_per_source, seed)
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "PKSampler", "TensorImageDataset", "collate", "open"]
