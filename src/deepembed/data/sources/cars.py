"""Cars196: `cars_annos.mat` (MATLAB struct array `annotations`, cell `class_names`), `car_ims/`.

Metric-learning split: classes 1-98 train, 99-196 test, all 16,185 images (the `test` flag
of each annotation is the classification split, not used). Labels are class - 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.sources.common import FileOptions, file_dataset, require
from deepembed.errors import DataError
from deepembed.io import reading

TRAIN_CLASSES = range(1, 99)
# loadmat's own error, and what a readable .mat of another layout raises
MAT_ERRORS = (scipy.io.matlab.MatReadError, IndexError, TypeError)
FIX = "download it by hand and place cars_annos.mat and car_ims/ there (deepembed data prepare)"


def read_annotations(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative image paths, classes 1-196, class names) from cars_annos.mat."""
    with reading(path, "a Cars196 cars_annos.mat file", also=MAT_ERRORS):
        mat = scipy.io.loadmat(path, squeeze_me=True)
        annotations = np.atleast_1d(mat["annotations"])
        relative = [str(p) for p in np.atleast_1d(annotations["relative_im_path"])]
        classes = np.atleast_1d(annotations["class"]).astype(np.int64)
        names = [str(n) for n in np.atleast_1d(mat["class_names"])]
    return relative, classes, names


def open_cars(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """The train (classes 1-98) or test (99-196) split of Cars196."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for cars196; known: train, test")
    base = Path(root)
    relative, classes, names = read_annotations(require(base / "cars_annos.mat", "Cars196", FIX))
    keep = np.flatnonzero(np.isin(classes, TRAIN_CLASSES) == (split == "train"))
    dataset = file_dataset(
        base,
        [relative[i] for i in keep],
        classes[keep] - 1,
        {c - 1: names[c - 1] if c <= len(names) else str(c) for c in np.unique(classes[keep])},
        options,
    )
    dataset.ids = keep[dataset.ids] + 1  # 1-based row of the annotation
    return dataset
