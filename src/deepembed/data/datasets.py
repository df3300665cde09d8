"""Datasets: items are (image (C, H, W) float in [0, 1], label).

A label is a class id; an image-file dataset read from multi-label rows (a CSV with a
`path,labels` header) has a (N, C) 0/1 label matrix instead, and its items carry their (C,)
row (`item_label`), which `collate` stacks into (B, C).

Two kinds share one interface (`labels`, `class_names`, `ids`, `__len__`, `__getitem__`,
`subset`, `image_shape`): small datasets held once in memory as uint8 (MNIST family, CIFAR),
and image-file datasets that hold only paths and decode per item in the loader's workers
(CUB, Cars, SOP, In-Shop, folder, csv).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deepembed.data.images import (
    MAX_IMAGE_PIXELS,
    ScanReport,
    SkipLog,
    check_on_error,
    load_image,
    scan_files,
)
from deepembed.errors import DataError

log = logging.getLogger(__name__)


def item_label(labels: np.ndarray, index: int) -> int | torch.Tensor:
    """Item `index`'s label: its class id, or its (C,) int64 row of a multi-label matrix."""
    if labels.ndim == 1:
        return int(labels[index])
    return torch.from_numpy(np.array(labels[index], np.int64))


def same_label_rows(labels: np.ndarray, index: int) -> np.ndarray:
    """The rows (ascending) whose label, or whole multi-label row, equals item `index`'s."""
    same = labels == labels[index]
    return np.flatnonzero(same if labels.ndim == 1 else same.all(1))


class TensorImageDataset(Dataset):
    """Images held once as uint8 (N, C, H, W); converted to float per batch, never copied whole.

    `ids` are stable item ids (the row numbers of the split unless given), used by search
    results and embedding files. `class_names` maps label -> readable name.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: dict[int, str] | None = None,
        ids: np.ndarray | None = None,
    ) -> None:
        if images.ndim == 3:  # (N, H, W) grey -> (N, 1, H, W)
            images = images[:, None]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = np.arange(len(labels), dtype=np.int64) if ids is None else np.asarray(ids)
        self.class_names = class_names or {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255.0), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch in one indexing op: ((B, C, H, W) float, (B,) int64)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[index].float().div_(255.0)
        return images, torch.from_numpy(self.labels[np.asarray(indices)])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: np.ndarray) -> TensorImageDataset:
        """A dataset of the given rows, keeping their ids."""
        indices = np.asarray(indices, dtype=np.int64)
        return TensorImageDataset(
            self.images[torch.from_numpy(indices)].numpy(),
            self.labels[indices],
            self.class_names,
            self.ids[indices],
        )


class ImageFileDataset(Dataset):
    """Images decoded from files on demand; holds paths and labels only.

    `transform` maps an RGB PIL image to a (C, H, W) float tensor (a preset from
    `data.transforms.build_transforms`); `image_shape` is its output shape. `on_error`
    decides what a file that cannot be decoded at load time does: "fail" raises a
    DataError naming it; "skip" records it once and returns the next readable image of the
    same class instead, so P x K batches keep their shape. Skipped files go to `skip_log`
    when one is attached (the trainer's skipped.txt), else to one log warning per file and
    process. Images over `max_pixels` are refused as decompression bombs. `super_labels`
    (SOP), `names` (a readable name per item, e.g. emoji), `problems` (files dropped at open
    time, with reasons) and `skip_log` ride along with subsets.
    """

    def __init__(
        self,
        paths: list[str] | np.ndarray,
        labels: np.ndarray,
        class_names: dict[int, str] | None = None,
        ids: np.ndarray | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        image_shape: tuple[int, int, int] | None = None,
        on_error: str = "fail",
        super_labels: np.ndarray | None = None,
        super_class_names: dict[int, str] | None = None,
        problems: ScanReport | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
        names: np.ndarray | None = None,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if names is not None and len(names) != len(labels):
            raise ValueError(f"{len(names)} names but {len(labels)} labels")
        # fixed-width unicode array: workers read it without touching refcounts (no COW)
        self.paths = np.asarray(paths, dtype=str)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = np.arange(len(labels), dtype=np.int64) if ids is None else np.asarray(ids)
        self.class_names = class_names or {}
        self.super_labels = None if super_labels is None else np.asarray(super_labels, np.int64)
        self.super_class_names = super_class_names or {}
        self.names = None if names is None else np.asarray(names, dtype=str)
        self.transform = transform
        self._image_shape = image_shape
        self.on_error = check_on_error(on_error)
        self.problems = problems or ScanReport(checked=len(labels))
        self.max_pixels = max_pixels
        self.skip_log: SkipLog | None = None
        self._bad: set[int] = set()  # rows found unreadable in this process

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, index: int) -> torch.Tensor:
        image = load_image(self.paths[index], self.max_pixels)
        if self.transform is None:  # no preset: plain (3, H, W) float, sizes may differ
            return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0
        return self.transform(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        label = item_label(self.labels, index)
        try:
            return self._decode(index), label
        except DataError as exc:
            if self.on_error == "fail":
                raise
            self._skip(index, exc)
        # skip: walk the class's other rows (cyclically) to a readable one
        rows = same_label_rows(self.labels, index)
        start = int(np.searchsorted(rows, index))
        for row in np.roll(rows, -start):
            if int(row) in self._bad:
                continue
            try:
                return self._decode(int(row)), label
            except DataError as exc:
                self._skip(int(row), exc)
        raise DataError(f"no readable image left in class {label} ({self.paths[index]} ...)")

    def _skip(self, row: int, error: DataError) -> None:
        """Remember an unreadable row; record it in the skip log (or warn) once."""
        if row in self._bad:
            return
        self._bad.add(row)
        if self.skip_log is not None:
            self.skip_log.record(str(self.paths[row]), str(error))
        else:
            log.warning("skipping unreadable image %s (on_error=skip)", self.paths[row])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item: known from the preset, else read from the first item."""
        if self._image_shape is None:
            self._image_shape = tuple(self[0][0].shape)  # type: ignore[assignment]
        return self._image_shape  # type: ignore[return-value]

    def with_transform(
        self,
        transform: Callable[[Image.Image], torch.Tensor] | None,
        image_shape: tuple[int, int, int] | None = None,
    ) -> ImageFileDataset:
        """The same items with another transform (e.g. the training augmentation)."""
        return self._copy(np.arange(len(self)), transform, image_shape)

    def subset(self, indices: np.ndarray) -> ImageFileDataset:
        """A dataset of the given rows, keeping their ids, transform, super-labels and names."""
        return self._copy(np.asarray(indices, dtype=np.int64), self.transform, self._image_shape)

    def _copy(
        self,
        rows: np.ndarray,
        transform: Callable[[Image.Image], torch.Tensor] | None,
        image_shape: tuple[int, int, int] | None,
    ) -> ImageFileDataset:
        out = ImageFileDataset(
            self.paths[rows],
            self.labels[rows],
            self.class_names,
            self.ids[rows],
            transform,
            image_shape,
            self.on_error,
            None if self.super_labels is None else self.super_labels[rows],
            self.super_class_names,
            self.problems,
            self.max_pixels,
            None if self.names is None else self.names[rows],
        )
        out.skip_log = self.skip_log
        return out

    def scan(self, full: bool = False) -> ScanReport:
        """Check every file (PIL header check, or a full decode with `full`)."""
        return scan_files(self.paths.tolist(), full=full, max_pixels=self.max_pixels)

    def drop_unreadable(self, report: ScanReport) -> ImageFileDataset:
        """Apply the error policy to a scan: "fail" raises naming the files, "skip" drops them."""
        if not report.problems:
            return self
        if self.on_error == "fail":
            raise DataError(report.summary() + " (set data.on_error=skip to drop them)")
        bad = {path for path, _ in report.problems}
        keep = np.flatnonzero([p not in bad for p in self.paths])
        log.warning("skipped %s", report.summary())
        result = self.subset(keep)
        merged = ScanReport(self.problems.checked, self.problems.problems + report.problems)
        result.problems = merged
        return result


def collate(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for DataLoader: batches from __getitems__ pass through; item lists are stacked
    (labels into (B,) class ids, or (B, C) rows of a multi-label matrix)."""
    if isinstance(batch, tuple):
        return batch  # type: ignore[return-value]
    images, labels = zip(*batch, strict=True)  # type: ignore[call-overload]
    if labels and isinstance(labels[0], torch.Tensor):
        return torch.stack(images), torch.stack(labels).long()
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long)
