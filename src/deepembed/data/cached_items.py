"""Reading the decode-once cache (data/cache.py builds it): items as the trainer takes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from deepembed.data.datasets import item_label
from deepembed.data.images import ScanReport, SkipLog
from deepembed.data.preprocess import Preprocess


def to_chw(image: Image.Image) -> np.ndarray:
    """A PIL "L" / "RGB" image -> (C, H, W) uint8, the values v2.ToImage gives."""
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def rows_of(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """The given rows of an optional per-item array (None stays None)."""
    return None if values is None else np.asarray(values)[rows]


class CachedImageDataset(Dataset):
    """Items read from a cache array; the interface of ImageFileDataset the trainer uses.

    `window` (top, left, H, W) selects the eval item from a stored row; None means training
    items (`preprocess.train_geometry(scale)` on the stored base image, as a PIL image like
    the uncached augmentation). The memmap is opened lazily in each process (a pickled
    memmap would copy the whole array into every loader worker). Reading uses numpy and PIL,
    not torch ops: with 2 intra-op threads and the other core busy, per-item torch ops on
    these small tensors ran at ~40-90 items/s (vs thousands single-threaded).
    """

    def __init__(
        self,
        cache_path: Path,
        *,
        rows: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        paths: np.ndarray,
        class_names: dict[int, str],
        super_labels: np.ndarray | None,
        super_class_names: dict[int, str],
        names: np.ndarray | None,
        preprocess: Preprocess,
        window: tuple[int, int, int, int] | None,
        scale: tuple[float, float] = (0.3, 1.0),
        problems: ScanReport | None = None,
        skip_log: SkipLog | None = None,
    ) -> None:
        self.cache_path = Path(cache_path)
        self.rows = np.asarray(rows, dtype=np.int64)  # rows of the cache array
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = np.asarray(ids)
        self.paths = np.asarray(paths, dtype=str)
        self.class_names = class_names
        self.super_labels = super_labels
        self.super_class_names = super_class_names
        self.names = names
        self.preprocess = preprocess
        self.window = window
        self.scale = scale
        self.problems = problems or ScanReport(checked=len(self.labels))
        self.skip_log = skip_log
        self._array: np.ndarray | None = None
        self._augment: Callable[[Image.Image], Image.Image] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_augment": None}

    @property
    def array(self) -> np.ndarray:
        """The (N, C, H, W) uint8 memmap, opened read-only on first use in this process."""
        if self._array is None:
            self._array = np.load(self.cache_path, mmap_mode="r")
        return self._array

    @property
    def augmented(self) -> bool:
        """Whether items are training crops (random) rather than eval items."""
        return self.window is None

    def __len__(self) -> int:
        return len(self.labels)

    def _eval_pixels(self, rows: np.ndarray | int) -> np.ndarray:
        """uint8 (..., C, H, W): the eval window of the stored rows."""
        top, left, h, w = self.window  # type: ignore[misc]
        return self.array[rows, :, top : top + h, left : left + w]

    def _train_pixels(self, row: int) -> np.ndarray:
        """uint8 (C, H, W): a random crop + flip of the stored base image."""
        if self._augment is None:
            self._augment = v2.Compose(self.preprocess.train_geometry(self.scale))
        base = self.array[row]
        image = Image.fromarray(base[0] if len(base) == 1 else base.transpose(1, 2, 0))
        return to_chw(self._augment(image))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        row = int(self.rows[index])
        pixels = self._train_pixels(row) if self.augmented else self._eval_pixels(row)
        return _to_float(pixels), item_label(self.labels, index)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch: ((B, C, H, W) float, (B,) int64 or (B, C) multi-label rows); eval
        rows in one memmap read."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = torch.from_numpy(self.labels[indices])
        if self.augmented:
            pixels = np.stack([self._train_pixels(int(row)) for row in self.rows[indices]])
        else:
            pixels = self._eval_pixels(self.rows[indices])
        return _to_float(pixels), labels

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every item: the model input."""
        return self.preprocess.shape

    def subset(self, indices: np.ndarray) -> CachedImageDataset:
        """A dataset of the given rows, keeping their ids, labels, names and the cache."""
        indices = np.asarray(indices, dtype=np.int64)
        out = CachedImageDataset(
            self.cache_path,
            rows=self.rows[indices],
            labels=self.labels[indices],
            ids=self.ids[indices],
            paths=self.paths[indices],
            class_names=self.class_names,
            super_labels=rows_of(self.super_labels, indices),
            super_class_names=self.super_class_names,
            names=rows_of(self.names, indices),
            preprocess=self.preprocess,
            window=self.window,
            scale=self.scale,
            problems=self.problems,
            skip_log=self.skip_log,
        )
        out._array = self._array
        return out


# v2.ToDtype(float32, scale=True) on uint8 is `x.to(float32).mul_(1.0 / 255)`: the double
# 1/255 rounded to float32, one float32 multiply. The same in numpy, bit for bit (tested).
_UINT8_SCALE = np.float32(1.0 / 255)


def _to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], exactly as v2.ToDtype(torch.float32, scale=True)."""
    out = pixels.astype(np.float32, order="C")  # always a copy: never a view of the memmap
    out *= _UINT8_SCALE
    return torch.from_numpy(out)
