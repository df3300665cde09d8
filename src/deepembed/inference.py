"""Embed a dataset with a model: vectors, labels and ids, streamed batch by batch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from deepembed.data.adapt import Loading, for_model
from deepembed.data.datasets import collate
from deepembed.errors import DataError
from deepembed.evaluation import evaluate
from deepembed.io import atomic_write, load_npz, reading
from deepembed.models.embedder import Embedder

if TYPE_CHECKING:
    from deepembed.training.distributed import Strategy


@dataclass
class Embeddings:
    """Vectors (N, D) float32 with their labels (N,), item ids (N,) and class names.

    A hash model's vectors are its codes as +1/-1 floats (N, bits); `codes` then holds them
    packed, (N, bits / 8) uint8, bit j of an item in byte j // 8 at bit 7 - j % 8 (most
    significant first: numpy's packbits order, faiss's binary indexes read the same bytes).
    """

    vectors: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: dict[int, str] = field(default_factory=dict)
    codes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.vectors)
        if self.vectors.ndim != 2 or len(self.labels) != n or len(self.ids) != n:
            raise DataError(
                f"embeddings need vectors (N, D), labels (N,) and ids (N,); got "
                f"{self.vectors.shape}, {self.labels.shape}, {self.ids.shape}"
            )

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def from_codes(
        cls,
        signs: np.ndarray,
        labels: np.ndarray,
        ids: np.ndarray,
        class_names: dict[int, str] | None = None,
    ) -> Embeddings:
        """Embeddings of a hash model from its +1/-1 codes (N, bits), packed alongside."""
        return cls(signs, labels, ids, class_names or {}, np.packbits(signs > 0, axis=1))

    @property
    def bits(self) -> int:
        """Code length of a hash model's embeddings; 0 for float vectors."""
        return 0 if self.codes is None else self.vectors.shape[1]

    def save(self, path: str | Path) -> Path:
        """Write an .npz file (atomically) with arrays vectors, labels, ids (and codes)."""
        arrays = {
            "vectors": self.vectors,
            "labels": self.labels,
            "ids": self.ids,
            "class_names": np.array(json.dumps({str(k): v for k, v in self.class_names.items()})),
        }
        if self.codes is not None:
            arrays["codes"] = self.codes
        return atomic_write(Path(path), lambda tmp: np.savez(tmp.open("wb"), **arrays), ".npz")

    @classmethod
    def load(cls, path: str | Path) -> Embeddings:
        """Read a file written by `save`; a missing, empty or damaged file is a DataError."""
        if not Path(path).is_file():
            raise DataError(f"embeddings file not found: {path}")
        with (
            reading(path, "a deepembed embeddings .npz file") as file,
            load_npz(file) as data,
        ):
            names = json.loads(str(data["class_names"])) if "class_names" in data else {}
            return cls(
                data["vectors"],
                data["labels"],
                data["ids"],
                {int(k): v for k, v in names.items()},
                data.get("codes"),
            )


def auto_batch_size(shape: tuple[int, ...]) -> int:
    """Images per inference batch for inputs of `shape` (C, H, W): ~16 MB of input pixels
    per batch (1024 MNIST digits, 32 images at 224 px), so activations stay bounded."""
    pixels = int(np.prod(shape))
    return int(max(1, min(1024, 2**22 // max(1, pixels))))


def embed(
    model: Embedder,
    dataset: Dataset,
    batch_size: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Embeddings:
    """Embeddings of every item of `dataset` (items are (image, label)), in order.

    `batch_size` 0 picks one from the model's input size (`auto_batch_size`)."""
    if device is not None:
        model = model.to(device)
    device = next(model.parameters()).device
    batch_size = batch_size or auto_batch_size(model.preprocessing.shape)
    layout = torch.channels_last if model.prefers_channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    was_training = model.training
    model.eval()
    vectors, labels = [], []
    with (
        torch.no_grad(),
        tqdm(
            total=len(dataset),
            desc="embed",
            unit="img",  # type: ignore[arg-type]
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for images, batch_labels in loader:
            images = images.to(device).contiguous(memory_format=layout)
            vectors.append(model(images).float().cpu().numpy())
            labels.append(batch_labels.numpy())
            bar.update(len(batch_labels))
    model.train(was_training)
    ids = np.asarray(getattr(dataset, "ids", np.arange(len(dataset))), np.int64)  # type: ignore[arg-type]
    names = dict(getattr(dataset, "class_names", {}))
    if not vectors:
        vectors, labels = [np.empty((0, model.embedding_dim), np.float32)], [np.empty(0)]
    out = np.concatenate(vectors), np.concatenate(labels).astype(np.int64), ids, names
    return Embeddings.from_codes(*out) if model.produces_codes else Embeddings(*out)


def open_split_for(
    model: Embedder,
    dataset: str,
    root: str,
    split: str,
    eval_per_source: int = 5000,
    loading: Loading | None = None,
) -> Dataset:
    """One split of a named dataset, each image preprocessed by the model (never by a
    dataset default): what `embed` and `evaluate --model` read."""
    from deepembed import data

    items = data.open(dataset, root, split, eval_per_source, transform=None)
    return for_model(items, model.preprocessing, loading=loading or Loading())


def embed_split(
    model: Embedder,
    dataset: str,
    root: str,
    split: str,
    eval_per_source: int = 5000,
    loading: Loading | None = None,
    batch_size: int = 0,
) -> Embeddings:
    """Embeddings of one split of a named dataset (see `open_split_for`)."""
    loading = loading or Loading()
    items = open_split_for(model, dataset, root, split, eval_per_source, loading)
    return embed(model, items, batch_size, progress=loading.progress)


def embed_sharded(
    model: Embedder,
    dataset: Dataset,
    batch_size: int = 0,
    progress: bool = True,
    strategy: Strategy | None = None,
) -> Embeddings:
    """`embed` with the items shared out over the ranks of a distributed run, each rank
    embedding its share and every rank receiving the whole set, in order."""
    if strategy is None or strategy.world_size == 1:
        return embed(model, dataset, batch_size, progress=progress)
    rows = strategy.shard(len(dataset))  # type: ignore[arg-type]
    part = embed(model, Subset(dataset, rows.tolist()), batch_size, progress=progress)
    vectors, labels = strategy.gather_rows(part.vectors), strategy.gather_rows(part.labels)
    ids = np.asarray(getattr(dataset, "ids", np.arange(len(vectors))), np.int64)
    out = vectors, labels, ids, dict(getattr(dataset, "class_names", {}))
    return Embeddings.from_codes(*out) if model.produces_codes else Embeddings(*out)


def evaluate_embeddings(
    query: Embeddings,
    gallery: Embeddings | None,
    metrics: tuple[str, ...],
    distance: str = "cosine",
    backend: str = "auto",
) -> dict[str, Any]:
    """The metrics of `query` against `gallery`, or leave-one-out on `query` (gallery None)."""
    return evaluate(
        query.vectors,
        query.labels,
        None if gallery is None else gallery.vectors,
        None if gallery is None else gallery.labels,
        metrics=metrics,
        distance=distance,
        backend=backend,
    )


def evaluate_model(
    model: Embedder,
    query: Dataset,
    gallery: Dataset | None,
    metrics: tuple[str, ...],
    distance: str = "cosine",
    batch_size: int = 0,
    progress: bool = True,
    strategy: Strategy | None = None,
    backend: str = "auto",
) -> tuple[dict[str, Any], Embeddings, Embeddings | None]:
    """Embed the query (and gallery) sets with `model` and evaluate them: the one path the
    training callback, the final test and `deepembed evaluate --model` share. In a
    distributed run every rank embeds its shard and all ranks get the same metrics."""
    q = embed_sharded(model, query, batch_size, progress, strategy)
    g = None if gallery is None else embed_sharded(model, gallery, batch_size, progress, strategy)
    result = None
    if strategy is None or strategy.is_main:
        result = evaluate_embeddings(q, g, metrics, distance, backend)
    if strategy is not None:
        result = strategy.broadcast_object(result)
    return result, q, g  # type: ignore[return-value]
