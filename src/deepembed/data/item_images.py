"""The pictures of a run's items, by item id, from the run's own dataset split.

A run's embeddings (`embeddings/test.npz`, `gallery.npz`) carry the dataset's item ids; the
service shows gallery items that have no stored file, and the report draws its retrieval
grids, from the dataset itself. Without the files (a run copied elsewhere) there are no
pictures, never an error."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepembed.data.images import load_image

log = logging.getLogger(__name__)


def tensor_image(pixels: Any) -> Image.Image:
    """A dataset item's tensor (C, H, W) as a viewable image, its range stretched to 0-255."""
    array = np.asarray(pixels, np.float32)
    lo, hi = float(array.min()), float(array.max())
    array = (array - lo) / (hi - lo or 1.0) * 255.0
    array = array.astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array[:, :, :3])


class DatasetImages:
    """`images(item_id)` -> the PIL image of that item of one dataset split, or None.

    The split is opened on first use (it may take seconds) and never without its files:
    any failure means "no picture", logged once, never an error to a client."""

    def __init__(self, opener: Callable[[], Any], what: str) -> None:
        """`opener()` returns the split (items with `ids`); `what` names it in the log."""
        self.opener, self.what = opener, what
        self._lock = threading.Lock()
        self._opened: tuple[Any, dict[int, int]] | None = None
        self._failed = False

    @classmethod
    def of_run(cls, run_dir: Path, role: str = "gallery") -> DatasetImages | None:
        """The items of a run's test protocol, as its embeddings hold them: role "gallery"
        is its gallery (or the test queries searched leave-one-out), role "query" its test
        queries. From <run>/config.yaml (data and protocol); None without one."""
        from deepembed.config import load_config

        try:
            config = load_config(run_dir / "config.yaml")
        except Exception as exc:  # no config, or one this version cannot read
            log.warning("no item images for %s: %s", run_dir, exc)
            return None

        def opener() -> Any:
            from deepembed.training.build import open_eval_splits

            query, gallery = open_eval_splits(config)
            return gallery if role == "gallery" and gallery is not None else query

        return cls(opener, f"{config.data.name} ({role})")

    def _open(self) -> tuple[Any, dict[int, int]] | None:
        with self._lock:
            if self._opened is None and not self._failed:
                try:
                    dataset = self.opener()
                    ids = np.asarray(getattr(dataset, "ids", np.arange(len(dataset))))
                    self._opened = (dataset, {int(i): p for p, i in enumerate(ids.tolist())})
                except Exception as exc:  # no files here, a changed root ...: no pictures
                    log.warning("images of %s unavailable: %s", self.what, exc)
                    self._failed = True
            return self._opened

    def __call__(self, item_id: int) -> Image.Image | None:
        opened = self._open()
        if opened is None or item_id not in opened[1]:
            return None
        dataset, positions = opened
        paths = getattr(dataset, "paths", None)
        if paths is not None:  # an image-file dataset: the file itself, not its transform
            return load_image(paths[positions[item_id]])
        pixels = dataset[positions[item_id]][0]
        return pixels if isinstance(pixels, Image.Image) else tensor_image(pixels)

    def warm(self) -> None:
        """Open the dataset now, in a background thread (mnist30 takes ~10 s): the first
        thumbnail request then does not wait for it."""
        threading.Thread(target=self._open, name="gallery-images", daemon=True).start()
