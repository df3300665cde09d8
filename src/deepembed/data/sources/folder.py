"""The user's own data: `folder` (one sub-folder per class) and `csv` (path,label[,split]).

folder: `root/<class>/**/<image>`; when `root/<split>/` folders exist (train, test, ...)
each split is read from its own folder. Otherwise the classes (sorted) are halved,
class-disjoint: train = the first half, test = the rest, all = every class. Labels index
the sorted class names (over all split folders, so a class keeps its label everywhere).

csv: `root` is the CSV file, or a folder holding `labels.csv`; rows are path,label[,split]
with paths relative to the CSV's folder (an optional header row starts with "path").
Without a split column the classes are halved as for folders.

Multi-label rows: a header `path,labels[,split]` (plural) says that the label field holds
any number of labels separated by ";" (`img.jpg,cat;dog,train`; spaces around a label are
dropped; an empty field means no label). The dataset's `labels` are then a multi-hot (N, C)
int64 0/1 matrix, columns the sorted label names (`class_names`), and two items are relevant
to each other when they share a label. Such a CSV needs a split column (halving classes is
not defined when an item has several). Without that header, or with `path,label`, every row
has one label, read as before (a ";" stays part of the label's name).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.images import is_image_name
from deepembed.data.sources.common import FileOptions, file_dataset
from deepembed.data.splits import class_halves
from deepembed.errors import DataError
from deepembed.io import reading

log = logging.getLogger(__name__)

LABEL_SEPARATOR = ";"  # between the labels of a multi-label row (header path,labels)


def _subfolders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _images_under(folder: Path) -> list[str]:
    """Image files below `folder`, relative to it, in a stable (sorted) order."""
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(parent).relative_to(folder)
        found += [str(rel / f) for f in sorted(files) if is_image_name(f) and f[0] != "."]
    return found


def _label_order(names: list[str]) -> list[str]:
    """Class names sorted numerically when they are all integers, else as text."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def open_folder(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """An ImageFolder-style tree; see the module docstring for splits."""
    base = Path(root)
    if not root or not base.is_dir():
        raise DataError(f"folder dataset: root {root!r} is not a directory")
    top = _subfolders(base)
    split_dirs = [d for d in top if d in ("train", "test", "val", "query", "gallery")]
    if split_dirs:
        if split not in split_dirs:
            raise DataError(f"no split folder {split!r} in {root}; found {', '.join(split_dirs)}")
        classes = _label_order(sorted({c for d in split_dirs for c in _subfolders(base / d)}))
        folder, chosen = base / split, _subfolders(base / split)
    else:
        classes = _label_order(top)
        folder, chosen = base, class_halves(classes, split)
    if not classes:
        raise DataError(f"folder dataset {root}: no class sub-folders")
    label_of = {c: i for i, c in enumerate(classes)}
    relative, labels = [], []
    for name in chosen:
        files = _images_under(folder / name)
        relative += [f"{name}/{f}" for f in files]
        labels += [label_of[name]] * len(files)
    return file_dataset(
        folder, relative, np.array(labels, np.int64), dict(enumerate(classes)), options
    )


def read_csv(root: str) -> tuple[Path, list[list[str]], bool]:
    """The CSV file of `root`, its rows path,label[,split] (header dropped, fields stripped)
    and whether the header says multi-label rows (`path,labels`)."""
    path = Path(root)
    if path.is_dir():
        path = path / "labels.csv"
    if not path.is_file():
        raise DataError(f"csv dataset: no CSV file at {path}")
    with (
        reading(path, "a path,label[,split] CSV file"),
        path.open(newline="", encoding="utf-8") as f,
    ):
        rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
    multi = False
    if rows and rows[0][0].lower() == "path":
        multi = len(rows[0]) > 1 and rows[0][1].lower() == "labels"
        rows = rows[1:]
    for number, row in enumerate(rows, 1):
        if len(row) not in (2, 3) or not row[0]:
            raise DataError(f"{path}: row {number} is not path,label[,split]: {row}")
    if len({len(r) for r in rows}) > 1:
        raise DataError(f"{path}: either every row has a split column or none does")
    if multi and rows and len(rows[0]) == 2:
        raise DataError(
            f"{path}: multi-label rows (header path,labels) need a split column: path,labels,split"
        )
    if not multi and any(LABEL_SEPARATOR in r[1] for r in rows):
        log.warning(
            "%s: labels contain %r but the header is not path,labels: each is one class name",
            path,
            LABEL_SEPARATOR,
        )
    return path, rows, multi


def csv_splits(root: str) -> tuple[str, ...]:
    """The split names of a CSV's split column (empty without one)."""
    _, rows, _ = read_csv(root)
    return tuple(sorted({r[2] for r in rows if len(r) == 3}))


def open_csv(root: str, split: str, options: FileOptions) -> ImageFileDataset:
    """Rows path,label[,split] (or path,labels,split) of a CSV file; see the module docstring."""
    path, rows, multi = read_csv(root)
    if rows and len(rows[0]) == 3:
        chosen = rows if split == "all" else [r for r in rows if r[2] == split]
        if not chosen:
            known = ", ".join(csv_splits(root))
            raise DataError(f"{path}: no rows of split {split!r}; found {known}")
    else:
        keep = set(class_halves(_label_order(sorted({r[1] for r in rows})), split))
        chosen = [r for r in rows if r[1] in keep]
    if multi:
        names = [_label_names(r[1]) for r in rows]
        classes = _label_order(sorted({n for row in names for n in row}))
        if not classes:
            raise DataError(f"{path}: multi-label rows (header path,labels) but no labels")
        chosen_names = [_label_names(r[1]) for r in chosen]
        labels = multi_hot(chosen_names, {c: i for i, c in enumerate(classes)})
    else:
        classes = _label_order(sorted({r[1] for r in rows}))
        label_of = {c: i for i, c in enumerate(classes)}
        labels = np.array([label_of[r[1]] for r in chosen], np.int64)
    return file_dataset(
        path.parent, [r[0] for r in chosen], labels, dict(enumerate(classes)), options
    )


def _label_names(field: str) -> list[str]:
    """The labels of a multi-label field "cat; dog" (stripped, empty parts dropped)."""
    return [n.strip() for n in field.split(LABEL_SEPARATOR) if n.strip()]


def multi_hot(names: list[list[str]], column_of: dict[str, int]) -> np.ndarray:
    """(N, C) int64 0/1: row i has a 1 in the column of each of its label names."""
    out = np.zeros((len(names), len(column_of)), np.int64)
    for row, labels in enumerate(names):
        out[row, [column_of[n] for n in labels]] = 1
    return out
