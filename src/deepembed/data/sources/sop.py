"""Stanford Online Products: `Ebay_train.txt` / `Ebay_test.txt` (image_id class_id
super_class_id path, one header line), images under the root (e.g. `bicycle_final/...JPG`).

The official split: 11,318 train classes (59,551 images), 11,316 test classes (60,502).
Labels are class_id - 1; `super_labels` are super_class_id - 1 (12 product categories),
named after the category folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.sources.common import FileOptions, as_int, file_dataset, read_rows, require
from deepembed.errors import DataError

FIX = "download Stanford_Online_Products by hand and unpack it there (deepembed data prepare)"
LIST_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}


def open_sop(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """The train or test split of SOP, with super-class labels."""
    if split not in LIST_FILES:
        raise DataError(f"unknown split {split!r} for sop; known: train, test")
    base = Path(root)
    if not (base / LIST_FILES[split]).is_file() and (base / "Stanford_Online_Products").is_dir():
        base = base / "Stanford_Online_Products"
    list_file = require(base / LIST_FILES[split], "Stanford Online Products", FIX)
    rows = read_rows(list_file, 4, skip=1)  # header: image_id class_id super_class_id path
    ids = np.array([as_int(r[0], list_file) for r in rows], dtype=np.int64)
    classes = np.array([as_int(r[1], list_file) for r in rows], dtype=np.int64)
    supers = np.array([as_int(r[2], list_file) for r in rows], dtype=np.int64)
    relative = [r[3] for r in rows]
    # "bicycle_final/111085122871_0.JPG": category folder / product id _ view
    class_names = {
        int(c) - 1: f"{Path(p).parent.name}/{Path(p).stem.rsplit('_', 1)[0]}"
        for c, p in zip(classes, relative, strict=True)
    }
    super_names = {
        int(s) - 1: Path(p).parent.name.removesuffix("_final")
        for s, p in zip(supers, relative, strict=True)
    }
    dataset = file_dataset(
        base, relative, classes - 1, class_names, options, supers - 1, super_names
    )
    dataset.ids = ids[dataset.ids]  # the official image ids
    return dataset
