"""Datasets, samplers and transforms. `open(name, root, split)` is the entry point.

| name | on disk | splits |
|---|---|---|
| mnist30, mnist, fashion_mnist, kmnist, animal_mnist | IDX, pickles | train (0-4), test (5-9) |
| cifar10, cifar100 | python pickle batches | train, test |
| cifar10_hash1k, cifar100_hash1k | same | query (1k), train (5k), database (54k) |
| cifar10_hash10k, cifar100_hash10k | same | query (10k), train = database (50k) |
| cub200 | CUB_200_2011/images.txt ... | train (classes 1-100), test (101-200) |
| cars196 | cars_annos.mat, car_ims/ | train (classes 1-98), test (99-196) |
| sop | Ebay_train.txt, Ebay_test.txt | train, test (+ super_labels) |
| inshop | Eval/list_eval_partition.txt, img/ | train, query, gallery |
| folder | root/<class>/... or root/<split>/<class>/... | split folders, else class halves |
| csv | path,label[,split]; path,labels,split (multi-label) | split column, else class halves |
| emoji | rendered once from 2 Debian packages; no root | train, test (+ super_labels, names) |

In-memory datasets (MNIST family, CIFAR) are TensorImageDataset; the others are lazy
ImageFileDataset, decoded per item with the `transform` preset. "test" is accepted as an
alias of "query" where a dataset has query/gallery or query/database splits. Emoji needs
no root: it is rendered into a cache on first use (see `data.sources.emoji`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from deepembed.data.datasets import ImageFileDataset, TensorImageDataset, collate
from deepembed.data.images import MAX_IMAGE_PIXELS, SkipLog
from deepembed.data.samplers import (
    DistributedPKSampler,
    HierarchicalPKSampler,
    PKSampler,
    RandomBatchSampler,
)
from deepembed.data.sources.cars import open_cars
from deepembed.data.sources.cifar import open_cifar
from deepembed.data.sources.common import FileOptions
from deepembed.data.sources.cub import open_cub
from deepembed.data.sources.emoji import open_emoji
from deepembed.data.sources.folder import open_csv, open_folder
from deepembed.data.sources.inshop import open_inshop
from deepembed.data.sources.mnist_family import SINGLE_SOURCES, SOURCES, open_class_disjoint
from deepembed.data.sources.sop import open_sop
from deepembed.data.splits import hashing_split, per_class_holdout, validation_split
from deepembed.data.transforms import PRESETS, build_transforms
from deepembed.errors import DataError

Dataset = TensorImageDataset | ImageFileDataset

CIFAR = tuple(f"{f}{p}" for f in ("cifar10", "cifar100") for p in ("", "_hash1k", "_hash10k"))
FILE_READERS: dict[str, Callable[[str, str, FileOptions], ImageFileDataset]] = {
    "cub200": open_cub,
    "cars196": open_cars,
    "sop": open_sop,
    "inshop": open_inshop,
    "folder": open_folder,
    "csv": open_csv,
    "emoji": open_emoji,
}
ROOTLESS = ("emoji",)  # file datasets with a default location: root "" is allowed
DATASETS = ("mnist30", *SINGLE_SOURCES, *CIFAR, *FILE_READERS)


def eval_splits(name: str) -> tuple[str, str | None]:
    """(query split, gallery split or None) of a dataset's evaluation protocol.

    None means leave-one-out on the query split (CUB, Cars, SOP, the MNIST family ...);
    In-Shop searches its gallery, the CIFAR hashing protocols their database.
    """
    if name == "inshop":
        return "query", "gallery"
    if name in CIFAR and "_hash" in name:
        return "query", "database"
    return "test", None


def open(
    name: str,
    root: str = "",
    split: str = "train",
    eval_per_source: int = 5000,
    seed: int = 0,
    *,
    transform: str | Callable[[Image.Image], torch.Tensor] = "imagenet224",
    augment: bool = False,
    on_error: str = "fail",
    scan: bool = False,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> Dataset:
    """Open split `split` of dataset `name` (see the module docstring for names and splits).

    The MNIST family follows the class-disjoint protocol: labels 0-4 of each source train,
    5-9 are the unseen test classes (a seeded sample of `eval_per_source` per source).

    Image-file datasets only: `transform` is a preset name (small | imagenet224) or a
    callable PIL image -> tensor; `augment` picks the preset's training transform;
    `on_error` "fail" raises on the first missing/unreadable file, "skip" drops it and
    logs a summary (`dataset.problems`); `scan` header-checks every file now rather than
    finding corrupt ones when they are loaded; images over `max_image_pixels` are refused
    as decompression bombs.
    """
    if name == "mnist30":
        return open_class_disjoint(SOURCES, root, split, eval_per_source, seed)
    if name in SINGLE_SOURCES:
        return open_class_disjoint((name,), root, split, eval_per_source, seed)
    if name in CIFAR:
        return open_cifar(name, root, split)
    if name in FILE_READERS:
        if not root and name not in ROOTLESS:
            raise DataError(f"dataset {name!r} needs a root directory (data.root / --root)")
        options = file_options(transform, augment, on_error, scan, max_image_pixels)
        return FILE_READERS[name](root, split, options)
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def file_options(
    transform: str | Callable[[Image.Image], torch.Tensor] | None,
    augment: bool,
    on_error: str,
    scan: bool,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> FileOptions:
    """FileOptions from `open`'s arguments: a preset name is built, with its output shape."""
    if isinstance(transform, str):
        shape = PRESETS[transform].shape if transform in PRESETS else (3, 0, 0)
        return FileOptions(on_error, build_transforms(transform, augment), shape, scan, max_pixels)
    return FileOptions(on_error, transform, None, scan, max_pixels)


__all__ = [
    "DATASETS",
    "ROOTLESS",
    "Dataset",
    "DistributedPKSampler",
    "HierarchicalPKSampler",
    "ImageFileDataset",
    "PKSampler",
    "RandomBatchSampler",
    "SkipLog",
    "TensorImageDataset",
    "build_transforms",
    "collate",
    "eval_splits",
    "hashing_split",
    "open",
    "per_class_holdout",
    "validation_split",
]
