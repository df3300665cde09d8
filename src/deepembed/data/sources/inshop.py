"""In-Shop Clothes Retrieval: `Eval/list_eval_partition.txt` (a count line, a header line,
then image_name item_id evaluation_status) and `img/...` under the root.

Splits by item id: train (3,997 items, 25,882 images), query (14,218 images) and gallery
(12,612 images) sharing 3,985 test items. Labels: train items are numbered 0.. in id order,
test items follow, so query and gallery labels agree and never collide with train ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.sources.common import FileOptions, as_int, file_dataset, read_rows, require
from deepembed.errors import DataError

SPLITS = ("train", "query", "gallery")
FIX = "download In-Shop (DeepFashion) by hand and unpack Eval/ and img/ there"


def open_inshop(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """The train, query or gallery split of In-Shop."""
    if split == "test":
        split = "query"  # the evaluation split that is embedded as queries
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for inshop; known: {', '.join(SPLITS)}")
    base = Path(root)
    list_file = require(base / "Eval" / "list_eval_partition.txt", "In-Shop", FIX)
    rows = read_rows(list_file, 3, skip=2)
    first = list_file.read_text(encoding="utf-8").split(maxsplit=1)[:1]
    if first and as_int(first[0], list_file) != len(rows):
        raise DataError(f"{list_file} announces {first[0]} images but lists {len(rows)}")
    unknown = {r[2] for r in rows} - set(SPLITS)
    if unknown:
        raise DataError(f"{list_file}: unknown evaluation_status {sorted(unknown)}")
    train_items = sorted({r[1] for r in rows if r[2] == "train"})
    test_items = sorted({r[1] for r in rows if r[2] != "train"} - set(train_items))
    label_of = {item: i for i, item in enumerate(train_items + test_items)}
    keep = [i for i, r in enumerate(rows) if r[2] == split]
    labels = np.array([label_of[rows[i][1]] for i in keep], dtype=np.int64)
    dataset = file_dataset(
        base,
        [rows[i][0] for i in keep],
        labels,
        {label_of[rows[i][1]]: rows[i][1] for i in keep},
        options,
    )
    dataset.ids = np.asarray(keep, dtype=np.int64)[dataset.ids]  # row in the list file
    return dataset
