"""The pictures of a run's items, by item id, from the run's own dataset split.

A run's embeddings (`embeddings/test.npz`, `gallery.npz`) carry the dataset's item ids; the
service shows gallery items that have no stored file, and the report draws its retrieval
grids, from the dataset itself. Without the files (a run copied elsewhere) there are no
pictures, never an error."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import yaml
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

    The dataset is opened on first use (it may take seconds) and never without its files:
    any failure means "no picture", logged once, never an error to a client."""

    def __init__(self, name: str, root: str, split: str, extra: dict[str, Any]) -> None:
        self.name, self.root, self.split, self.extra = name, root, split, extra
        self._lock = threading.Lock()
        self._opened: tuple[Any, dict[int, int]] | None = None
        self._failed = False

    @classmethod
    def of_run(cls, run_dir: Path, role: str = "gallery") -> DatasetImages | None:
        """The run's gallery split (role "gallery": its gallery, or the test split searched
        leave-one-out) or query split (role "query"), from <run>/config.yaml; None when the
        run names no dataset."""
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            data = config["data"]
            name, root = str(data["name"]), str(data.get("root") or "")
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None
        from deepembed.data import eval_splits

        query, gallery = eval_splits(name)
        has_gallery = gallery and (run_dir / "embeddings" / "gallery.npz").is_file()
        split = gallery if role == "gallery" and has_gallery else query
        extra = {"eval_per_source": data.get("eval_per_source", 5000)}
        return cls(name, root, split, extra)

    def _open(self) -> tuple[Any, dict[int, int]] | None:
        with self._lock:
            if self._opened is None and not self._failed:
                try:
                    from deepembed import data

                    dataset = data.open(
                        self.name, self.root, self.split, transform=None, **self.extra
                    )
                    ids = np.asarray(getattr(dataset, "ids", np.arange(len(dataset))))
                    self._opened = (dataset, {int(i): p for p, i in enumerate(ids.tolist())})
                except Exception as exc:  # no files here, a changed root ...: no pictures
                    log.warning("gallery images of %s unavailable: %s", self.name, exc)
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
