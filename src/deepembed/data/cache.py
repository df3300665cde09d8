"""Decode-once cache: each image file decoded and resized once into a memory-mapped uint8 array.

Decoding and resizing large PNG/JPEG files dominates small-model training on a CPU; the cache
pays that once, and every later epoch, evaluation and embedding reads the stored pixels:

    <cache_dir>/<key>.npy    (N, C, H, W) uint8, read back with mmap_mode="r"
    <cache_dir>/<key>.json   sidecar: shape, layout, unreadable rows; written last

The key hashes the absolute paths, file sizes and mtimes, the Preprocess, the stored layout,
max_pixels and the Pillow / torchvision versions (their resize decides the pixels), so a
changed file or preprocessing gets a new cache. Both files are written under temporary names
(`<key>.<pid>.<random>.tmp.*`) and renamed when complete: a crash never leaves a cache that
is later trusted, and the next build of that key deletes what a killed build left.

Two layouts (`_Layout`):
- "crop": exactly the eval geometry's output (resize + centre crop), for eval-only caches.
- "base": a square of side S around the centre, the input of the training augmentation
  (`train_geometry()`: RandomResizedCrop + flip of the stored image, per item); with
  resize 0 (no centre crop at evaluation) the whole image resized to S x S. When the
  Preprocess resizes the shorter side to `resize` >= both crop sides, S = resize and the
  square is placed so the eval crop is a fixed window of it: one array then gives training
  crops AND bit-identical eval items.

Eval items are bit-identical to `preprocess.transform()` on the decoded image: the stored
uint8 are the pixels that transform scales to float, and reading scales them the same way.
JPEG draft decoding (DCT downscaling) is not used because its pixels differ.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from deepembed.data.cached_items import CachedImageDataset, rows_of, to_chw
from deepembed.data.datasets import ImageFileDataset
from deepembed.data.images import ScanReport, SkipLog, convert_image, load_image
from deepembed.data.preprocess import INTERPOLATIONS, Preprocess
from deepembed.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: a resize-0 base holds the whole image (was its centre square)
_BUILD_BATCH = 16
_DISK_MARGIN = 256 * 2**20  # keep this much disk free: a memmap write on a full disk is SIGBUS


def cached_dataset(
    dataset: ImageFileDataset,
    preprocess: Preprocess,
    *,
    train: bool,
    augment: bool,
    cache_dir: Path,
    workers: int = 0,
    progress: bool = True,
    max_bytes: int = 10 * 2**30,
    scale: tuple[float, float] = (0.3, 1.0),
) -> Dataset:
    """`dataset` read from a decode-once cache (built now unless a complete one exists).

    Items are eval items (bit-identical to `preprocess.transform()`) unless `train` and
    `augment`, then the training crop + flip of a stored base image. Unreadable files follow
    `dataset.on_error` ("fail" raises naming the file, "skip" drops the rows). An array over
    `max_bytes` (or the free disk) is not cached: one warning, and the plain per-item
    transform is returned instead. `scale` is the area range of the random training crop.
    """
    augmented = train and augment
    layout = _layout(preprocess, augmented)
    n = len(dataset)
    nbytes = n * layout.row_bytes(preprocess.channels)
    cache_dir = Path(os.path.abspath(cache_dir))  # loader workers may run elsewhere
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _cache_key(dataset.paths, preprocess, layout, dataset.max_pixels)
    path = cache_dir / f"{key}.npy"
    meta = _read_meta(path, (n, preprocess.channels, *layout.side))
    if meta is None:
        free = shutil.disk_usage(cache_dir).free
        if nbytes > max_bytes or nbytes + _DISK_MARGIN > free:
            limit = f"max_bytes {max_bytes:,}" if nbytes > max_bytes else f"free disk {free:,}"
            log.warning(
                f"not caching {n} images: {nbytes:,} bytes exceed {limit}; decoding per item"
            )
            transform = preprocess.train_transform(scale) if augmented else preprocess.transform()
            return dataset.with_transform(transform, preprocess.shape)
        meta = _build(dataset, preprocess, layout, path, workers=workers, progress=progress)
    else:
        log.info("reusing image cache %s", path)
    bad = {int(row): reason for row, reason in meta["bad"]}
    if bad:
        _report_bad(dataset, bad)
    keep = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
    return CachedImageDataset(
        path,
        rows=keep,
        labels=dataset.labels[keep],
        ids=dataset.ids[keep],
        paths=dataset.paths[keep],
        class_names=dataset.class_names,
        super_labels=None if dataset.super_labels is None else dataset.super_labels[keep],
        super_class_names=dataset.super_class_names,
        names=rows_of(getattr(dataset, "names", None), keep),
        preprocess=preprocess,
        window=None if augmented else layout.window,
        scale=scale,
        problems=_merged(dataset.problems, [(str(dataset.paths[r]), bad[r]) for r in bad]),
        skip_log=dataset.skip_log,
    )


# -- the stored layout ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    """What one stored row is: `side` (H, W); `window` (top, left, H, W) of the eval item."""

    kind: str  # "crop" (the eval geometry's output) | "base" (square input of augmentation)
    side: tuple[int, int]
    window: tuple[int, int, int, int] | None  # None: this layout cannot give eval items

    def row_bytes(self, channels: int) -> int:
        return channels * self.side[0] * self.side[1]


def _layout(preprocess: Preprocess, augmented: bool) -> _Layout:
    """One "base" array serves both when the eval crop fits in the resized shorter side."""
    h, w = preprocess.input_size
    r = preprocess.resize
    if r and max(h, w) <= r:  # eval crop = a fixed window of an (r, r) base
        return _Layout("base", (r, r), (_half(r - h), _half(r - w), h, w))
    if augmented:
        s = max(r, h, w)
        return _Layout("base", (s, s), None)
    return _Layout("crop", (h, w), (0, 0, h, w))


def _half(extra: int) -> int:
    """torchvision's centre-crop anchor: int(round(extra / 2)) (round half to even)."""
    return round(extra / 2.0)


def _store_row(image: Image.Image, preprocess: Preprocess, layout: _Layout) -> np.ndarray:
    """A decoded RGB image -> the stored (C, H, W) uint8 row."""
    image = convert_image(image, preprocess.channels)
    if layout.kind == "crop":  # the eval transform's own steps, before ToImage / ToDtype
        return to_chw(v2.Compose(preprocess.geometry())(image))
    side = layout.side[0]
    if layout.window is not None:  # the eval transform's own resize (its first step)
        resized = preprocess.geometry()[0](image)
    else:
        mode = INTERPOLATIONS[preprocess.interpolation]
        # resize 0: evaluation sees the whole image resized to the input, so training crops
        # come from the whole image too (a centre square would hide the ends of its long side)
        size = side if preprocess.resize else [side, side]
        resized = v2.Resize(size, interpolation=mode, antialias=True)(image)
    width, height = resized.size
    top, left = _half(height - side), _half(width - side)
    if layout.window is not None:
        # the eval crop's anchor in `resized` minus its fixed anchor in the base: the base is
        # within a pixel of centred and holds the eval crop at exactly `window`
        wt, wl, h, w = layout.window
        top, left = _half(height - h) - wt, _half(width - w) - wl
    if not (0 <= top <= height - side and 0 <= left <= width - side):
        raise AssertionError(f"base square {top},{left} outside the resized {width}x{height}")
    return to_chw(resized.crop((left, top, left + side, top + side)))


def _cache_key(
    paths: np.ndarray | list[str], preprocess: Preprocess, layout: _Layout, max_pixels: int
) -> str:
    """Hash of everything the stored pixels depend on (files by path, size and mtime)."""
    digest = hashlib.sha256()
    head = {
        "format": FORMAT_VERSION,
        "preprocess": preprocess.to_dict(),
        "layout": asdict(layout),
        "max_pixels": max_pixels,
        "pillow": PIL.__version__,
        "torchvision": torchvision.__version__,
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    for path in paths:
        absolute = os.path.abspath(path)
        try:
            stat = os.stat(absolute)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"\0{absolute}\0{size}\0{mtime}".encode())
    return digest.hexdigest()[:32]


# -- building ------------------------------------------------------------------------------
class _Decoder(Dataset):
    """Row i -> (i, stored row or None, reason); decoding errors are returned, not raised."""

    def __init__(
        self, paths: np.ndarray, max_pixels: int, preprocess: Preprocess, layout: _Layout
    ) -> None:
        self.paths, self.max_pixels = paths, max_pixels
        self.preprocess, self.layout = preprocess, layout

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        try:
            image = load_image(self.paths[index], self.max_pixels)
            return index, _store_row(image, self.preprocess, self.layout), ""
        except DataError as exc:
            return index, None, str(exc)


def _batch(
    items: list[tuple[int, np.ndarray | None, str]],
) -> list[tuple[int, np.ndarray | None, str]]:
    return items  # rows are written one by one; no stacking copy


def _build(
    dataset: ImageFileDataset,
    preprocess: Preprocess,
    layout: _Layout,
    path: Path,
    *,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Decode every file into a temporary memmap, rename it and the sidecar into place."""
    n = len(dataset)
    shape = (n, preprocess.channels, *layout.side)
    _remove_orphans(path)
    stem = f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp_array = path.with_name(stem + ".tmp.npy")
    tmp_meta = path.with_name(stem + ".tmp.json")
    decoder = _Decoder(dataset.paths, dataset.max_pixels, preprocess, layout)
    loader = DataLoader(decoder, batch_size=_BUILD_BATCH, num_workers=workers, collate_fn=_batch)
    bad: list[tuple[int, str]] = []
    start = time.perf_counter()
    batches = iter(loader)
    try:
        array = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.uint8, shape=shape)
        with tqdm(total=n, desc="decode", unit="img", disable=not progress) as bar:
            for items in batches:
                for index, row, reason in items:
                    if row is None:
                        if dataset.on_error == "fail":
                            raise DataError(
                                f"{_naming(reason, dataset.paths[index])} "
                                "(set data.on_error=skip to drop it)"
                            )
                        bad.append((index, reason))
                    else:
                        array[index] = row
                bar.update(len(items))
        array.flush()
        del array
        meta = {
            "format": FORMAT_VERSION,
            "shape": list(shape),
            "layout": asdict(layout),
            "preprocess": preprocess.to_dict(),
            "bad": bad,
            "seconds": round(time.perf_counter() - start, 3),
        }
        tmp_meta.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp_array, path)  # the array first: without its sidecar it is not trusted
        os.replace(tmp_meta, path.with_suffix(".json"))
    finally:
        del batches  # stops loader workers now, also when a file failed
        tmp_array.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    log.info("cached %d images in %.1f s: %s", n, meta["seconds"], path)
    return meta


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of this key left by a killed build (its process is gone)."""
    for orphan in path.parent.glob(f"{path.stem}.*.*.tmp.*"):
        pid = orphan.name.split(".")[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            orphan.unlink(missing_ok=True)
        except OSError:
            pass  # alive, owned by someone else


def _naming(reason: str, path: str) -> str:
    return reason if str(path) in reason else f"{path}: {reason}"


def _read_meta(path: Path, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The sidecar of a complete cache whose array has `shape`, else None (rebuild)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        return None
    if tuple(meta.get("shape", ())) != shape:
        return None
    if array.shape != shape or array.dtype != np.uint8:
        return None
    return meta


def _report_bad(dataset: ImageFileDataset, bad: dict[int, str]) -> None:
    """Apply the dataset's error policy to rows found unreadable while building."""
    problems = [(str(dataset.paths[row]), reason) for row, reason in bad.items()]
    if dataset.on_error == "fail":
        report = ScanReport(len(dataset), problems)
        raise DataError(report.summary() + " (set data.on_error=skip to drop them)")
    skip_log: SkipLog | None = dataset.skip_log
    if skip_log is not None:  # its owner (the trainer) prints one summary line
        for file, reason in problems:
            skip_log.record(file, reason)
        return
    log.warning("skipped %s", ScanReport(len(dataset), problems).summary())


def _merged(problems: ScanReport, more: list[tuple[str, str]]) -> ScanReport:
    if not more:
        return problems
    return ScanReport(problems.checked, problems.problems + more)
