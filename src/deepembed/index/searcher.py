"""Searcher: a model directory and an index; search by image, by indexed item or by vector.

Images go through the one image loader (`load_image`) and the model's own preprocessing. A
hash model's queries (and added items) are packed codes: np.packbits(embedding > 0, axis=1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deepembed.data.images import load_image
from deepembed.errors import DataError
from deepembed.index.base import Index
from deepembed.models.embedder import Embedder

ImageInput = Image.Image | str | os.PathLike[str]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: int
    distance: float
    label: int
    label_name: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def default_model_dir(index_dir: str | Path) -> Path | None:
    """The model of a run directory holding the index: <run>/model beside <run>/index (or
    beside a milvus-lite <run>/index.db); None for a Milvus server, which has no run."""
    if str(index_dir).startswith(("http://", "https://", "tcp://")):
        return None
    return Path(str(index_dir).partition("#")[0]).parent / "model"


class Searcher:
    """Search `index` by image (embedded by `model`), by an indexed item's id, or by vector.

    `model` may be an Embedder, a model directory (loaded on the first image), or None when
    only by_id / by_vector are used."""

    def __init__(self, index: Index, model: Embedder | str | Path | None = None) -> None:
        self.index = index
        self._model = model

    @classmethod
    def open(cls, index: str | Path, model: str | Path | None = None) -> Searcher:
        """The index directory `index`, with `model` or the run's model beside it."""
        from deepembed import index as index_lib

        return cls(index_lib.open(index), model or default_model_dir(index))

    @property
    def model(self) -> Embedder:
        """The Embedder, loaded (and checked against the index) on first use."""
        if self._model is None:
            raise DataError("no model to embed images with: give a model directory (--model)")
        if not isinstance(self._model, Embedder):
            self._model = Embedder.load(self._model)
            self._check(self._model)
        return self._model

    def _check(self, model: Embedder) -> None:
        if model.produces_codes != self.index.binary:
            kinds = ("binary codes", "float vectors")
            raise DataError(
                f"the model embeds {kinds[not model.produces_codes]} but the index holds "
                f"{kinds[not self.index.binary]}"
            )
        if model.embedding_dim != self.index.dim:
            unit = "bits" if model.produces_codes else "dimensions"
            raise DataError(
                f"the model embeds {model.embedding_dim} {unit}, the index holds {self.index.dim}"
            )

    def embed(self, images: Sequence[ImageInput]) -> np.ndarray:
        """(n, dim) float32 embeddings, or (n, bits / 8) packed codes for a hash model."""
        model = self.model
        pixels = [model.preprocess(self._load(image)) for image in images]
        if not pixels:
            width = model.embedding_dim // 8 if model.produces_codes else model.embedding_dim
            return np.empty((0, width), np.uint8 if model.produces_codes else np.float32)
        out = model.embed(torch.stack(pixels)).numpy()
        return np.packbits(out > 0, axis=1) if model.produces_codes else out.astype(np.float32)

    @staticmethod
    def _load(image: ImageInput) -> Image.Image:
        if isinstance(image, Image.Image):
            return image
        if not Path(image).is_file():
            raise DataError(f"query image not found: {image}")
        return load_image(image)  # the one image loader: size guard, EXIF, any mode

    # -- search --------------------------------------------------------------------------
    def by_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Nearest items to one vector (dim,) or packed code (bits / 8,)."""
        query = np.asarray(vector)
        if query.ndim != 1:
            raise DataError(f"by_vector takes one vector, got shape {query.shape}")
        distances, ids = self.index.search(query[None], k, filters, params)
        return self._hits(distances[0], ids[0])

    def by_image(
        self,
        image: ImageInput,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Nearest items to an image (a PIL image or a file)."""
        return self.by_vector(self.embed([image])[0], k, filters, params)

    def by_id(
        self,
        item_id: int,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """Nearest items to an indexed item, the item itself excluded."""
        item = self.index.get([int(item_id)])[0]
        assert item.vector is not None
        distances, ids = self.index.search(item.vector[None], k + 1, filters, params)
        keep = ids[0] != item.id
        return self._hits(distances[0][keep][:k], ids[0][keep][:k])

    def _hits(self, distances: np.ndarray, ids: np.ndarray) -> list[Hit]:
        found = ids >= 0
        items = self.index.get(ids[found])
        names = self.index.class_names
        return [
            Hit(it.id, float(d), it.label, names.get(it.label), it.source, it.metadata)
            for it, d in zip(items, distances[found], strict=True)
        ]

    # -- adding --------------------------------------------------------------------------
    def add_images(
        self,
        images: Sequence[str | os.PathLike[str]],
        ids: np.ndarray | list[int],
        labels: np.ndarray | list[int] | None = None,
        metadata: list[dict[str, Any] | None] | None = None,
    ) -> None:
        """Embed image files and add them, their paths recorded as sources."""
        self.index.add(
            self.embed(images), np.asarray(ids), labels, metadata, [str(p) for p in images]
        )
