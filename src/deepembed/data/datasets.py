"""In-memory image datasets: items are (image (C, H, W) float in [0, 1], label)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


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


def collate(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for DataLoader: batches from __getitems__ pass through; item lists are stacked."""
    if isinstance(batch, tuple):
        return batch  # type: ignore[return-value]
    images, labels = zip(*batch, strict=True)  # type: ignore[call-overload]
    return torch.stack(images), torch.as_tensor(labels, dtype=torch.long)
