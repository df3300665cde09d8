"""The decode-once cache against the plain per-item decode it replaces."""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from deepembed.data import cache
from deepembed.data.cache import CachedImageDataset, cached_dataset
from deepembed.data.datasets import ImageFileDataset, collate
from deepembed.data.images import SkipLog, load_image
from deepembed.data.preprocess import Preprocess
from deepembed.errors import DataError

# (width, height, mode, suffix): both orientations, odd and even sides, alpha, grey, JPEG
FILES = [
    (600, 400, "RGBA", ".png"),
    (400, 600, "RGB", ".jpg"),
    (601, 399, "L", ".png"),
    (399, 601, "RGBA", ".png"),
    (97, 64, "LA", ".png"),
    (64, 97, "RGB", ".png"),
    (57, 200, "P", ".png"),
    (33, 33, "RGB", ".jpg"),
]
# shared base (square / odd non-square window), resize=0 (crop layout), grey, crop > resize
PREPROCESS = [
    Preprocess(input_size=(48, 48), resize=56),
    Preprocess(input_size=(47, 44), resize=56, interpolation="bicubic"),
    Preprocess(input_size=(40, 52)),
    Preprocess(input_size=(40, 40), resize=45, channels=1, mean=(0.5,), std=(0.5,)),
    Preprocess(input_size=(60, 30), resize=50),
]
PREPROCESS_IDS = ["shared", "shared-odd-bicubic", "resize0", "grey", "crop-over-resize"]
SMALL = Preprocess(input_size=(32, 32), resize=36)


def write_file(path: Path, width: int, height: int, mode: str, seed: int) -> str:
    """A smooth gradient plus noise (compresses like a photo), alpha varying across it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256, x * 7 % 256], -1)
    noise = rng.integers(0, 40, (height, width, 4))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image.convert("RGB").quantize(64) if mode == "P" else image.convert(mode)
    image.save(path)
    return str(path)


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("originals")
    return [
        Path(write_file(root / f"{i}{suffix}", w, h, mode, seed=i))
        for i, (w, h, mode, suffix) in enumerate(FILES)
    ]


@pytest.fixture
def files(tmp_path: Path, originals: list[Path]) -> list[str]:
    """A fresh copy of FILES per test (tests change and break them)."""
    root = tmp_path / "images"
    root.mkdir()
    return [str(shutil.copy(path, root / path.name)) for path in originals]


def make_dataset(paths: list[str], on_error: str = "fail") -> ImageFileDataset:
    n = len(paths)
    return ImageFileDataset(
        paths,
        np.arange(n) % 3,
        {0: "a", 1: "b", 2: "c"},
        ids=np.arange(n) * 10 + 7,
        on_error=on_error,
        names=np.array([f"item{i}" for i in range(n)]),
    )


def build(dataset, preprocess=SMALL, cache_dir: Path | None = None, **kwargs):
    kwargs = {"train": False, "augment": False, "progress": False, **kwargs}
    return cached_dataset(dataset, preprocess, cache_dir=cache_dir, **kwargs)


def cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


@pytest.mark.parametrize("preprocess", PREPROCESS, ids=PREPROCESS_IDS)
def test_eval_items_are_bit_identical_to_the_transform(files, tmp_path, preprocess):
    cached = build(make_dataset(files), preprocess, tmp_path / "cache")
    transform = preprocess.transform()
    assert cached.image_shape == preprocess.shape
    for i, path in enumerate(files):
        image, label = cached[i]
        expected = transform(load_image(path))
        assert image.dtype == torch.float32 and image.shape == preprocess.shape
        assert torch.equal(image, expected), path
        assert label == i % 3
    # train without augmentation is the eval item too
    plain = build(make_dataset(files), preprocess, tmp_path / "cache", train=True)
    assert torch.equal(plain[3][0], transform(load_image(files[3])))


@pytest.mark.parametrize("preprocess", PREPROCESS, ids=PREPROCESS_IDS)
def test_train_items_have_the_input_shape_and_vary(files, tmp_path, preprocess):
    cached = build(make_dataset(files), preprocess, tmp_path / "cache", train=True, augment=True)
    assert cached.augmented and cached.image_shape == preprocess.shape
    torch.manual_seed(0)
    first = [cached[i][0] for i in range(len(files))]
    assert all(x.shape == preprocess.shape and x.dtype == torch.float32 for x in first)
    assert all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x in first)
    again = [cached[i][0] for i in range(len(files))]
    assert sum(not torch.equal(a, b) for a, b in zip(first, again, strict=True)) >= 4
    images, labels = cached.__getitems__([0, 2, 5])
    assert images.shape == (3, *preprocess.shape) and labels.tolist() == [0, 2, 2]


def test_train_items_are_crops_of_the_stored_base_at_the_given_scale(files, tmp_path):
    # scale (1, 1) on a square base: RandomResizedCrop takes the whole base, then resizes
    cached = build(
        make_dataset(files), cache_dir=tmp_path / "c", train=True, augment=True, scale=(1.0, 1.0)
    )
    base = Image.fromarray(np.asarray(cached.array[2]).transpose(1, 2, 0))
    whole = v2.Compose([v2.Resize([32, 32], antialias=True), v2.ToImage()])(base)
    whole = v2.functional.to_dtype(whole, torch.float32, scale=True)
    items = [cached[2][0] for _ in range(24)]
    plain = sum(torch.equal(x, whole) for x in items)
    flipped = sum(torch.equal(x, whole.flip(-1)) for x in items)
    assert plain + flipped == 24 and plain > 0 and flipped > 0  # nothing but these two


def test_without_a_centre_crop_training_crops_come_from_the_whole_image(files, tmp_path):
    """resize 0: evaluation resizes the whole image, so the augmentation's base is the whole
    image resized to its square (not a centre square, which hides the long side's ends)."""
    square = Preprocess(input_size=(40, 40))
    train = build(make_dataset(files), square, tmp_path / "c", train=True, augment=True)
    transform = square.transform()
    for i, path in enumerate(files):
        whole = (transform(load_image(path)) * 255).round().to(torch.uint8)
        assert torch.equal(torch.from_numpy(np.asarray(train.array[i])), whole), path


def test_one_array_serves_training_and_evaluation_when_the_crop_fits(files, tmp_path):
    train = build(make_dataset(files), SMALL, tmp_path / "c", train=True, augment=True)
    evaluation = build(make_dataset(files), SMALL, tmp_path / "c")
    assert train.cache_path == evaluation.cache_path
    assert cache_files(tmp_path / "c") == sorted(
        [train.cache_path.name, f"{train.cache_path.stem}.json"]
    )
    assert train.array.shape == (len(files), 3, 36, 36)  # the resized square, not the crop
    # resize=0: the eval crop cannot come out of a square base, so two arrays
    no_crop = Preprocess(input_size=(32, 32))
    a = build(make_dataset(files), no_crop, tmp_path / "d", train=True, augment=True)
    b = build(make_dataset(files), no_crop, tmp_path / "d")
    assert a.cache_path != b.cache_path and b.array.shape == (len(files), 3, 32, 32)


def test_a_second_call_reuses_the_cache_without_decoding(files, tmp_path, monkeypatch):
    first = build(make_dataset(files), cache_dir=tmp_path / "c")
    stamp = first.cache_path.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "load_image", refuse)
    second = build(make_dataset(files), cache_dir=tmp_path / "c")
    assert second.cache_path == first.cache_path
    assert second.cache_path.stat().st_mtime_ns == stamp
    assert torch.equal(second[4][0], first[4][0])
    # a relative path to the same file is the same key
    relative = [os.path.relpath(p) for p in files]
    assert build(make_dataset(relative), cache_dir=tmp_path / "c").cache_path == first.cache_path


def test_a_changed_file_or_preprocess_gets_a_new_key(files, tmp_path):
    first = build(make_dataset(files), cache_dir=tmp_path / "c").cache_path
    stat = os.stat(files[2])
    os.utime(files[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    touched = build(make_dataset(files), cache_dir=tmp_path / "c")
    assert touched.cache_path != first
    # new content (new size and mtime)
    write_file(Path(files[5]), 80, 90, "RGB", seed=99)
    rewritten = build(make_dataset(files), cache_dir=tmp_path / "c")
    assert rewritten.cache_path not in (first, touched.cache_path)
    assert torch.equal(rewritten[5][0], SMALL.transform()(load_image(files[5])))
    other = build(make_dataset(files), SMALL.at_size(24), tmp_path / "c")
    fewer_pixels = cached_dataset(
        ImageFileDataset(files, np.zeros(len(files)), max_pixels=10**6),
        SMALL,
        train=False,
        augment=False,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    keys = {first, touched.cache_path, rewritten.cache_path, other.cache_path}
    assert len(keys | {fewer_pixels.cache_path}) == 5


def corrupt(files: list[str], index: int) -> str:
    Path(files[index]).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return files[index]


def test_on_error_fail_names_the_file_and_leaves_no_cache(files, tmp_path):
    bad = corrupt(files, 3)
    with pytest.raises(DataError, match=re.escape(bad)):
        build(make_dataset(files), cache_dir=tmp_path / "c")
    assert cache_files(tmp_path / "c") == []


@pytest.mark.parametrize("workers", [0, 2])
def test_on_error_skip_drops_the_rows_and_records_them(files, tmp_path, workers):
    bad = corrupt(files, 3)
    dataset = make_dataset(files, on_error="skip")
    dataset.skip_log = SkipLog(tmp_path / "skipped.txt")
    cached = build(dataset, cache_dir=tmp_path / "c", workers=workers)
    assert len(cached) == len(files) - 1
    assert 37 not in cached.ids and list(cached.labels) == [0, 1, 2, 1, 2, 0, 1]
    assert bad in dataset.skip_log.entries() and bad in dict(cached.problems.problems)
    assert torch.equal(cached[3][0], SMALL.transform()(load_image(files[4])))
    # reused: dropped and recorded again (a new run's skip log), and "fail" refuses it
    fresh = make_dataset(files, on_error="skip")
    fresh.skip_log = SkipLog(tmp_path / "skipped2.txt")
    assert len(build(fresh, cache_dir=tmp_path / "c")) == len(files) - 1
    assert list(fresh.skip_log.entries()) == [bad]
    with pytest.raises(DataError, match=re.escape(bad)):
        build(make_dataset(files), cache_dir=tmp_path / "c")


def test_a_crash_while_building_leaves_nothing_trusted(files, tmp_path, monkeypatch):
    calls = []

    def crash(path, max_pixels=None):
        calls.append(path)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return load_image(path, max_pixels)

    monkeypatch.setattr(cache, "load_image", crash)
    with pytest.raises(RuntimeError, match="killed"):
        build(make_dataset(files), cache_dir=tmp_path / "c")
    assert cache_files(tmp_path / "c") == []
    monkeypatch.undo()
    cached = build(make_dataset(files), cache_dir=tmp_path / "c")
    # an array without its sidecar (a crash between the two renames) is rebuilt, not trusted
    cached.cache_path.with_suffix(".json").unlink()
    cached.cache_path.write_bytes(b"garbage")
    # what a killed build left (its pid is gone) is deleted by the next build of that key
    orphan = cached.cache_path.with_name(f"{cached.cache_path.stem}.999999999.abcd.tmp.npy")
    orphan.write_bytes(b"half")
    again = build(make_dataset(files), cache_dir=tmp_path / "c")
    assert torch.equal(again[0][0], SMALL.transform()(load_image(files[0])))
    assert not orphan.exists()


def test_over_max_bytes_it_warns_once_and_decodes_per_item(files, tmp_path, caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="deepembed.data.cache"):
        plain = build(make_dataset(files), cache_dir=tmp_path / "c", max_bytes=1000)
    assert len(caplog.records) == 1 and "not caching" in caplog.text
    assert isinstance(plain, ImageFileDataset) and plain.image_shape == SMALL.shape
    assert torch.equal(plain[1][0], SMALL.transform()(load_image(files[1])))
    augmented = build(
        make_dataset(files), cache_dir=tmp_path / "c", max_bytes=1000, train=True, augment=True
    )
    assert augmented[0][0].shape == SMALL.shape
    # nor when the disk lacks room (a memmap write on a full disk kills the process)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: SimpleNamespace(free=1))
    assert isinstance(build(make_dataset(files), cache_dir=tmp_path / "c"), ImageFileDataset)
    assert cache_files(tmp_path / "c") == []


def test_subset_keeps_ids_labels_names_and_items(files, tmp_path):
    dataset = make_dataset(files)
    dataset.super_labels = np.arange(len(files)) // 4
    cached = build(dataset, cache_dir=tmp_path / "c")
    part = cached.subset(np.array([6, 1, 4]))
    assert list(part.ids) == [67, 17, 47] and list(part.labels) == [0, 1, 1]
    assert list(part.names) == ["item6", "item1", "item4"] and list(part.super_labels) == [1, 0, 1]
    assert part.class_names == cached.class_names and list(part.paths) == [
        files[i] for i in (6, 1, 4)
    ]
    for j, i in enumerate((6, 1, 4)):
        assert torch.equal(part[j][0], cached[i][0])
    nested = part.subset(np.array([2]))
    assert list(nested.ids) == [47] and torch.equal(nested[0][0], cached[4][0])


def test_getitems_equals_stacked_getitem(files, tmp_path):
    cached = build(make_dataset(files), cache_dir=tmp_path / "c")
    indices = [5, 0, 5, 7, 2]
    images, labels = cached.__getitems__(indices)
    assert torch.equal(images, torch.stack([cached[i][0] for i in indices]))
    assert labels.dtype == torch.int64 and labels.tolist() == [cached[i][1] for i in indices]


def test_parallel_build_and_loader_workers_read_the_memmap(files, tmp_path):
    serial = build(make_dataset(files), cache_dir=tmp_path / "serial")
    parallel = build(make_dataset(files), cache_dir=tmp_path / "parallel", workers=2)
    assert np.array_equal(np.asarray(serial.array), np.asarray(parallel.array))
    assert isinstance(parallel, CachedImageDataset)
    assert len(pickle.dumps(parallel)) < 10_000  # workers get the path, not the pixels
    loader = DataLoader(parallel, batch_size=3, num_workers=2, collate_fn=collate)
    images, labels = zip(*loader, strict=True)
    expected = parallel.__getitems__(list(range(len(files))))
    assert torch.equal(torch.cat(images), expected[0]) and torch.equal(
        torch.cat(labels), expected[1]
    )
