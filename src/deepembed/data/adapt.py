"""Bring a dataset to a model's input: the one preprocessing path (the model's).

Training, evaluation, `deepembed embed`, `evaluate --model`, `index build` and `search`
all call `for_model`, so an image reaches a model exactly as that model's `preprocess`
describes, whichever dataset it comes from:

- image files: decoded once into a memory-mapped uint8 cache at the model's input
  (data/cache.py), or decoded per item with `Preprocess.transform()` when caching is off;
  training with augmentation draws random resized crops and flips;
- in-memory tensors (MNIST family, CIFAR): used as they are when they already have the
  input shape, else converted per batch (`Preprocess.tensor_transform`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deepembed.data.datasets import ImageFileDataset, TensorImageDataset
from deepembed.data.preprocess import Preprocess


def default_cache_dir() -> Path:
    """$DEEPEMBED_CACHE/images, else ~/.cache/deepembed/images."""
    root = os.environ.get("DEEPEMBED_CACHE") or Path.home() / ".cache" / "deepembed"
    return Path(root) / "images"


@dataclass(frozen=True)
class Loading:
    """How image files are read: cached (and where) or decoded per item."""

    cache: bool = True
    cache_dir: str = ""  # "" = default_cache_dir()
    max_cache_gb: float = 10.0
    workers: int = 0
    crop_scale: float = 0.3  # smallest area fraction of a training crop
    progress: bool = True


class ResizedTensorDataset(Dataset):
    """An in-memory dataset seen through a model's preprocessing, batch by batch."""

    def __init__(self, base: TensorImageDataset, preprocess: Preprocess) -> None:
        self.base, self.preprocess = base, preprocess
        self.labels, self.ids, self.class_names = base.labels, base.ids, base.class_names

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.preprocess.tensor_transform(image[None])[0], label

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.base.__getitems__(indices)
        return self.preprocess.tensor_transform(images), labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item: the model's input."""
        return self.preprocess.shape

    def subset(self, indices: np.ndarray) -> ResizedTensorDataset:
        """The given rows, keeping ids."""
        return ResizedTensorDataset(self.base.subset(indices), self.preprocess)


def for_model(
    dataset: Any,
    preprocess: Preprocess,
    train: bool = False,
    augment: bool = False,
    loading: Loading | None = None,
) -> Any:
    """`dataset` as the model with `preprocess` takes it (see the module docstring)."""
    loading = loading or Loading()
    if isinstance(dataset, TensorImageDataset):
        if tuple(dataset.image_shape) == preprocess.shape:
            return dataset
        return ResizedTensorDataset(dataset, preprocess)
    if not isinstance(dataset, ImageFileDataset):
        raise TypeError(f"cannot adapt a {type(dataset).__name__} to a model")
    augmented = train and augment
    if loading.cache:
        from deepembed.data.cache import cached_dataset

        return cached_dataset(
            dataset,
            preprocess,
            train=train,
            augment=augment,
            cache_dir=Path(loading.cache_dir) if loading.cache_dir else default_cache_dir(),
            workers=loading.workers,
            progress=loading.progress,
            max_bytes=int(loading.max_cache_gb * 2**30),
            scale=(loading.crop_scale, 1.0),
        )
    transform = (
        preprocess.train_transform((loading.crop_scale, 1.0))
        if augmented
        else preprocess.transform()
    )
    return dataset.with_transform(transform, preprocess.shape)
