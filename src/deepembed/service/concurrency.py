"""A readers-writer lock (searches share the index, writes have it alone) and the
micro-batcher that embeds images arriving together in one forward pass."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool


class ReadWriteLock:
    """Many readers or one writer; a waiting writer stops new readers (no starvation).

    faiss indexes are not safe to search while they change: searches take `read`, adds and
    removes `write`, so a search never sees a half-added item."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class MicroBatcher:
    """`await embed(image)`: images embedded together by `embed_many` in a worker thread,
    off the event loop, one forward pass at a time (passes in parallel threads would fight
    over the cores).

    While a pass runs, the images that arrive wait for it and go together in the next one
    (up to `max_batch`); when none runs, the first image waits up to `wait_ms` for company.
    So the batch grows with the load by itself. max_batch 1 turns batching off: each image
    is embedded alone in a worker thread (`embed_here`, where a caller can do the rest of its
    request's work in the same thread), in one of `max_passes` slots (`slot()`): as many
    threads calling the model in-process would, no more (on few cores, more threads only
    fight over them and over the GIL). `batches` and `batched_items` count what happened."""

    def __init__(
        self,
        embed_many: Callable[[list[Any]], np.ndarray],
        wait_ms: float,
        max_batch: int,
        max_passes: int = 0,
    ) -> None:
        self._embed_many = embed_many
        # batching off: at most this many requests in the model at once (0: twice the cores)
        self.max_passes = max_passes if max_passes > 0 else 2 * (os.cpu_count() or 1)
        self._slots = threading.BoundedSemaphore(self.max_passes)
        self.wait = max(0.0, wait_ms) / 1000
        self.max_batch = max(1, int(max_batch))
        self._pending: list[tuple[Any, asyncio.Future[np.ndarray]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None  # the pass in flight
        self.batches = 0
        self.batched_items = 0
        self._count_lock = threading.Lock()  # embed_here counts from worker threads

    @property
    def off(self) -> bool:
        """Batching off (max_batch 1): callers embed in their own worker thread."""
        return self.max_batch == 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Batching off: one of the `max_passes` slots for a request's model work (a worker
        thread blocks here until one is free)."""
        with self._slots:
            yield

    def embed_here(self, image: Any) -> np.ndarray:
        """One image embedded alone in the calling worker thread (which holds a slot),
        counted as a pass."""
        row = self._embed_many([image])[0]
        with self._count_lock:
            self.batches += 1
            self.batched_items += 1
        return row

    def _embed_in_slot(self, image: Any) -> np.ndarray:
        with self.slot():
            return self.embed_here(image)

    async def embed(self, image: Any) -> np.ndarray:
        """The embedding (or packed code) row of one image."""
        if self.off:  # each image in its own thread, as callers in-process would
            return await run_in_threadpool(self._embed_in_slot, image)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((image, future))
        if self._task is None:  # else the pass in flight starts the next when it ends
            if len(self._pending) >= self.max_batch or self.wait == 0:
                self._start()
            elif self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_later())
        return await future

    def _start(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._pending and self._task is None:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._task = asyncio.create_task(self._run(batch))

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.wait)
        self._flusher = None
        self._start()

    async def _run(self, batch: list[tuple[Any, asyncio.Future[np.ndarray]]]) -> None:
        try:
            rows = await run_in_threadpool(self._embed_many, [image for image, _ in batch])
        except Exception as exc:  # every waiter of this pass gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            self.batches += 1
            self.batched_items += len(batch)
            for (_, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row)
        finally:
            self._task = None
            self._start()  # what arrived meanwhile, at once


class Uptime:
    """Seconds since the service started."""

    def __init__(self) -> None:
        self.started = time.time()

    def __call__(self) -> float:
        return time.time() - self.started
