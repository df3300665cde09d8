"""What the image-file readers share: list-file parsing and building a lazy dataset."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepembed.data.datasets import ImageFileDataset
from deepembed.data.images import (
    MAX_IMAGE_PIXELS,
    check_on_error,
    missing_files,
    resolve_inside,
)
from deepembed.errors import DataError
from deepembed.io import reading

log = logging.getLogger(__name__)


@dataclass
class FileOptions:
    """How an image-file dataset is opened.

    on_error: "fail" or "skip" for missing/unreadable files. transform: the per-item
    transform and its output shape. scan: header-check every file at open time (otherwise
    only existence is checked at open and decoding errors surface per item at load time).
    max_pixels: larger images are refused as decompression bombs (data.max_image_pixels).
    """

    on_error: str = "fail"
    transform: Callable[[Image.Image], torch.Tensor] | None = None
    image_shape: tuple[int, int, int] | None = None
    scan: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        check_on_error(self.on_error)
        if self.max_pixels < 1:
            raise DataError(f"data.max_image_pixels must be >= 1, got {self.max_pixels}")


def require(path: Path, what: str, fix: str) -> Path:
    """`path` if it is a file, else a DataError naming it and how to get it."""
    if not path.is_file():
        raise DataError(f"missing {what} file {path}: {fix}")
    return path


def read_rows(path: Path, columns: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a list file (first `skip` lines dropped, blanks ignored)."""
    with reading(path, "a text list file"):
        lines = path.read_text(encoding="utf-8").splitlines()[skip:]
    rows = []
    for number, line in enumerate(lines, start=skip + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise DataError(
                f"{path}:{number}: expected {columns} fields, got {len(fields)}: {line!r}"
            )
        rows.append(fields)
    return rows


def as_int(value: str, path: Path) -> int:
    """An integer field of a list file; anything else is a DataError naming the file."""
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}: expected an integer, got {value!r}") from None


def file_dataset(
    root: Path,
    relative: Sequence[str],
    labels: np.ndarray,
    class_names: dict[int, str],
    options: FileOptions,
    super_labels: np.ndarray | None = None,
    super_class_names: dict[int, str] | None = None,
) -> ImageFileDataset:
    """A lazy dataset of `root / relative[i]`, with escape, existence (and optional scan) checks.

    `ids` are the rows of the list as given, so they stay stable when files are skipped.
    """
    paths = [str(resolve_inside(root, r)) for r in relative]
    dataset = ImageFileDataset(
        paths,
        np.asarray(labels, dtype=np.int64),
        class_names,
        transform=options.transform,
        image_shape=options.image_shape,
        on_error=options.on_error,
        super_labels=super_labels,
        super_class_names=super_class_names,
        max_pixels=options.max_pixels,
    )
    dataset = dataset.drop_unreadable(missing_files(paths))
    if options.scan:
        dataset = dataset.drop_unreadable(dataset.scan())
    if len(dataset) == 0:
        raise DataError(f"no usable images under {root}")
    return dataset
