"""CUB-200-2011: `CUB_200_2011/images.txt`, `image_class_labels.txt`, `classes.txt`, `images/`.

Metric-learning split (Oh Song et al. 2016): classes 1-100 train, 101-200 test, all images
of each class (the official train_test_split.txt is a classification split, not used).
Labels are the official class id - 1, so train labels are 0-99 and test labels 100-199.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.sources.common import FileOptions, as_int, file_dataset, read_rows, require
from deepembed.errors import DataError

FOLDER = "CUB_200_2011"
TRAIN_CLASSES = range(1, 101)
FIX = "run `deepembed data prepare cub200 --root DIR` (see `deepembed data prepare --help`)"


def base_dir(root: str) -> Path:
    """The folder holding images.txt: `root/CUB_200_2011` or `root` itself."""
    path = Path(root)
    return path / FOLDER if (path / FOLDER / "images.txt").is_file() else path


def open_cub(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """The train (classes 1-100) or test (101-200) split of CUB-200-2011."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for cub200; known: train, test")
    base = base_dir(root)
    images_txt = require(base / "images.txt", "CUB-200-2011", FIX)
    labels_txt = require(base / "image_class_labels.txt", "CUB-200-2011", FIX)
    paths = {as_int(i, images_txt): p for i, p in read_rows(images_txt, 2)}
    classes = {as_int(i, labels_txt): as_int(c, labels_txt) for i, c in read_rows(labels_txt, 2)}
    if paths.keys() != classes.keys():
        raise DataError(f"{images_txt} and {labels_txt} list different image ids")
    names_txt = base / "classes.txt"
    names = (
        {as_int(i, names_txt): n for i, n in read_rows(names_txt, 2)}
        if names_txt.is_file()
        else {c: Path(paths[i]).parent.name for i, c in classes.items()}
    )
    ids = np.array(sorted(paths), dtype=np.int64)
    label = np.array([classes[i] for i in ids], dtype=np.int64)
    keep = np.isin(label, TRAIN_CLASSES) == (split == "train")
    ids, label = ids[keep], label[keep]
    dataset = file_dataset(
        base / "images",
        [paths[i] for i in ids],
        label - 1,
        {c - 1: names.get(c, str(c)) for c in np.unique(label).tolist()},
        options,
    )
    dataset.ids = ids[dataset.ids]  # the official image ids of the kept rows
    return dataset
