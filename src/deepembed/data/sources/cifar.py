"""CIFAR-10 / CIFAR-100 from the official python pickle batches, and the hashing protocols.

Layout: `cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` and
`cifar-100-python/{train, test, meta}` (under the root, or the root itself). Each batch is a
pickled dict with b"data" (N, 3072) uint8 rows (R, G, B planes of 32x32) and b"labels"
(CIFAR-10) or b"fine_labels" / b"coarse_labels" (CIFAR-100).

Dataset names and splits:
- cifar10, cifar100: the official train (50,000) / test (10,000) split.
- cifar10_hash1k, cifar100_hash1k: the deep-hashing protocol over all 60,000 images:
  query 1,000 and train 5,000, both class-balanced, database = the other 54,000.
- cifar10_hash10k, cifar100_hash10k: query = the official test set (10,000), train =
  database = the official train set (50,000).
The hash1k split is drawn once with a fixed seed (not the run's) and written next to the
batches (`deepembed-<name>-split.npz`); every later open reads that file, so all runs and
machines use the same split. Item ids index the 60,000 images (train batches, then test).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np

from deepembed.data.datasets import TensorImageDataset
from deepembed.errors import DataError
from deepembed.io import PICKLE_ERRORS, load_npz, reading

log = logging.getLogger(__name__)

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
HASH_SPLIT_SEED = 0  # fixed: the protocol's split never depends on the run's seed
HASH_SPLITS = ("query", "train", "database")
FIX = "run `deepembed data prepare {name} --root DIR`"


def _unpickle(path: Path) -> dict[bytes, object]:
    if not path.is_file():
        name = "cifar10" if "10-" in path.parent.name else "cifar100"
        raise DataError(f"missing CIFAR file {path}: {FIX.format(name=name)}")
    with reading(path, "a CIFAR pickle", also=PICKLE_ERRORS), path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def _batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) labels of one pickled batch."""
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR batch ({exc})") from exc
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def base_dir(root: str, family: str) -> Path:
    """The folder of the batches: `root/<official folder>` or `root` itself."""
    path = Path(root)
    return path / FOLDERS[family] if (path / FOLDERS[family]).is_dir() else path


def load_cifar(root: str, family: str) -> tuple[np.ndarray, np.ndarray, int, dict[int, str]]:
    """All 60,000 images (train batches then test), labels, the train count and class names."""
    base = base_dir(root, family)
    if family == "cifar10":
        files, key = [f"data_batch_{i}" for i in range(1, 6)], b"labels"
        meta, names_key = base / "batches.meta", b"label_names"
    else:
        files, key = ["train"], b"fine_labels"
        meta, names_key = base / "meta", b"fine_label_names"
    train = [_batch(base / f, key) for f in files]
    test = _batch(base / "test_batch" if family == "cifar10" else base / "test", key)
    names_raw = _unpickle(meta).get(names_key, [])
    names = {i: n.decode() if isinstance(n, bytes) else str(n) for i, n in enumerate(names_raw)}  # type: ignore[attr-defined]
    images = np.concatenate([b[0] for b in train] + [test[0]])
    labels = np.concatenate([b[1] for b in train] + [test[1]])
    return images, labels, sum(len(b[1]) for b in train), names


def hash1k_split(labels: np.ndarray, n_query: int = 1000, n_train: int = 5000) -> dict:
    """Class-balanced query and train rows drawn with HASH_SPLIT_SEED; the rest is database."""
    classes = np.unique(labels)
    rng = np.random.default_rng(HASH_SPLIT_SEED)
    q_per, t_per = n_query // len(classes), n_train // len(classes)
    query, train = [], []
    for c in classes:
        rows = rng.permutation(np.flatnonzero(labels == c))
        if len(rows) < q_per + t_per:
            raise DataError(f"class {c} has {len(rows)} images; hash1k needs {q_per + t_per}")
        query.append(rows[:q_per])
        train.append(rows[q_per : q_per + t_per])
    query_rows, train_rows = np.sort(np.concatenate(query)), np.sort(np.concatenate(train))
    database = np.setdiff1d(np.arange(len(labels)), np.concatenate([query_rows, train_rows]))
    return {"query": query_rows, "train": train_rows, "database": database}


def _written_split(base: Path, name: str, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The hash1k split recorded under `base`; drawn and written there on first use."""
    path = base / f"deepembed-{name}-split.npz"
    if path.exists():
        with reading(path, "a recorded split .npz file"), load_npz(path) as f:
            split = {k: f[k] for k in HASH_SPLITS}
        if max(int(v.max(initial=-1)) for v in split.values()) >= len(labels):
            raise DataError(f"recorded split {path} does not match the {len(labels)} images")
        return split
    split = hash1k_split(labels)
    try:
        with path.open("wb") as f:
            np.savez(f, **split)
    except OSError as exc:  # read-only data: the seeded draw is still the same everywhere
        log.warning("could not record the %s split in %s: %s", name, path, exc)
    return split


def open_cifar(name: str, root: str, split: str) -> TensorImageDataset:
    """`name`: cifar10|cifar100 (train/test) or <family>_hash1k|_hash10k (query/train/database)."""
    family, _, protocol = name.partition("_")
    images, labels, n_train, names = load_cifar(root, family)
    if not protocol:
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} for {name}; known: train, test")
        rows = np.arange(n_train) if split == "train" else np.arange(n_train, len(labels))
    else:
        split = "query" if split == "test" else split
        if split not in HASH_SPLITS:
            raise DataError(f"unknown split {split!r} for {name}; known: {', '.join(HASH_SPLITS)}")
        if protocol == "hash10k":
            rows = np.arange(n_train, len(labels)) if split == "query" else np.arange(n_train)
        else:
            rows = _written_split(base_dir(root, family), name, labels)[split]
    return TensorImageDataset(images[rows], labels[rows], names, ids=rows)
