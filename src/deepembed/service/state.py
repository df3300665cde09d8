"""ServiceState: the searcher, its lock, the micro-batcher, the image store and the work
the routes hand to worker threads (search, add, remove), each under the right lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepembed.data.images import load_image
from deepembed.errors import DataError
from deepembed.index.base import Item
from deepembed.index.searcher import Hit, Searcher
from deepembed.service.concurrency import MicroBatcher, ReadWriteLock, Uptime
from deepembed.service.errors import NotFoundError
from deepembed.service.images import ImageStore, decode
from deepembed.service.metrics import Metrics
from deepembed.service.settings import ServiceSettings

log = logging.getLogger(__name__)
GalleryImages = Callable[[int], Image.Image | None]


class ServiceState:
    """What the routes share. Searches hold the read lock, adds and removes the write lock:
    a search never sees a half-added item, and an add is answered only once committed."""

    def __init__(
        self, searcher: Searcher, settings: ServiceSettings, gallery: GalleryImages | None
    ) -> None:
        self.searcher, self.settings, self.gallery = searcher, settings, gallery
        self.index = searcher.index
        self.lock = ReadWriteLock()
        self.metrics = Metrics()
        self.uptime = Uptime()
        self.batcher = MicroBatcher(
            searcher.embed, settings.batch_wait_ms, settings.max_batch, settings.max_passes
        )
        self.store = None if settings.images_dir is None else ImageStore(settings.images_dir)
        if self.store is not None:  # images of adds a crash cut short (never acknowledged)
            self.store.sweep(self.index.next_id())
        self._since_snapshot = 0
        self._ids_lock = threading.Lock()
        self._next_id = self.index.next_id()

    # -- reads ---------------------------------------------------------------------------
    def search(self, query: dict[str, Any]) -> list[Hit]:
        """`query`: one of vector (np.ndarray) or id, with k and filters."""
        k, filters = query["k"], query.get("filters")
        with self.lock.read():
            if "id" in query:
                self._known(query["id"])
                return self.searcher.by_id(query["id"], k, filters)
            return self.searcher.by_vector(query["vector"], k, filters)

    def search_image(self, data: bytes, name: str, query: dict[str, Any]) -> list[Hit]:
        """Decode, embed and search in the calling worker thread, in one of the batcher's
        slots: one hop off the event loop per request when batching is off (three hops
        cost more than the work on few cores)."""
        with self.batcher.slot():
            image, _ = decode(data, name, self.settings.max_pixels)
            return self.search(query | {"vector": self.batcher.embed_here(image)})

    def item(self, item_id: int) -> dict[str, Any]:
        with self.lock.read():
            item = self._known(item_id)
            name = self.index.class_names.get(item.label)
        return {"id": item.id, "label": item.label, "label_name": name, "metadata": item.metadata}

    def _known(self, item_id: int) -> Item:
        """The item of `item_id` (one catalogue read); NotFoundError when there is none."""
        try:
            return self.index.get([item_id])[0]
        except DataError:
            raise NotFoundError(f"no item with id {item_id}") from None

    def image(self, item_id: int) -> tuple[Path | None, Image.Image | None]:
        """(the stored file, or None and the image from its source or the gallery)."""
        with self.lock.read():
            source = self._known(item_id).source
        if self.store is not None and (path := self.store.find(item_id)) is not None:
            return path, None
        if source and Path(source).is_file():  # recorded by `index add` or an upload
            return None, load_image(source, self.settings.max_pixels)
        image = self.gallery(item_id) if self.gallery is not None else None
        if image is None:
            raise NotFoundError(f"item {item_id} has no image")
        return None, image

    # -- writes --------------------------------------------------------------------------
    def add(
        self,
        vectors: np.ndarray,
        uploads: list[tuple[bytes, str]],
        labels: list[int] | None,
        metadata: list[dict[str, Any]],
    ) -> list[int]:
        """Add embedded uploads: ids reserved, images stored (fsynced) while searches go on,
        then the catalogue commit under the write lock; returns the ids once durable."""
        with self._ids_lock:  # ids are never reused: a refused add leaves a gap
            ids = list(range(self._next_id, self._next_id + len(vectors)))
            self._next_id += len(vectors)
        sources: list[str | None] = [None] * len(ids)
        try:
            if self.store is not None:
                sources = [
                    str(self.store.put(i, data, fmt))
                    for i, (data, fmt) in zip(ids, uploads, strict=True)
                ]
            with self.lock.write():
                self.index.add(vectors, np.asarray(ids, np.int64), labels, metadata, sources)
                self._since_snapshot += len(ids)
                if self._since_snapshot >= self.settings.snapshot_every:
                    self._snapshot()
        except BaseException:  # refused (bad metadata ...): no file left behind
            for i in ids if self.store is not None else ():
                self.store.remove(i)
            raise
        return ids

    def remove(self, item_id: int) -> None:
        with self.lock.write():
            self._known(item_id)
            self.index.remove([item_id])
            if self.store is not None:
                self.store.remove(item_id)

    def _snapshot(self) -> None:
        """Write the index file (faiss; a flush on Milvus) so the next start replays less."""
        if getattr(self.index, "path", "") is None:
            return  # an in-memory index: nothing to snapshot to
        try:
            self.index.save()
            self._since_snapshot = 0
        except Exception:  # the catalogue has everything: a failed snapshot loses nothing
            log.exception("index snapshot failed; the catalogue has every item")

    def close(self) -> None:
        with self.lock.write():
            if self._since_snapshot:
                self._snapshot()
            close = getattr(self.index, "close", None)
            if close is not None:
                close()

    # -- facts ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self.lock.read():
            info = {"items": len(self.index), "spec": self.index.spec}
            info |= {"metric": self.index.metric, "dim": self.index.dim}
        batcher = self.batcher
        return {
            **info,
            "backend": type(self.index).__name__,
            "model": self.settings.model_name,
            "uptime_s": round(self.uptime(), 1),
            "embed_batches": batcher.batches,
            "mean_batch": batcher.batched_items / batcher.batches if batcher.batches else 0.0,
            "settings": {
                k: v for k, v in asdict(self.settings).items() if k not in ("api_key", "images_dir")
            },
        }
