"""Each reader on a tiny copy in the official layout: counts, labels, splits, ids."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from deepembed import data
from deepembed.errors import DataError
from tests.data.conftest import CARS_CLASSES, INSHOP, SOP_TEST, SOP_TRAIN, write_image


def test_cub_splits_classes_1_100_train_101_200_test(cub_root: Path) -> None:
    train = data.open("cub200", str(cub_root), "train")
    test = data.open("cub200", str(cub_root / "CUB_200_2011"), "test")  # either root works
    assert len(train) == 7 and len(test) == 5
    assert np.bincount(train.labels).nonzero()[0].tolist() == [0, 1, 99]
    assert sorted(set(test.labels.tolist())) == [100, 199]
    assert train.class_names[1] == "002.Laysan_Albatross"
    assert train.ids.tolist() == [1, 2, 3, 4, 5, 6, 7]  # official image ids
    image, label = train[2]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32 and label == 1
    assert train.image_shape == (3, 224, 224)
    assert Path(train.paths[0]).parent.name == "001.Black_footed_Albatross"


def test_cars_reads_the_mat_file_and_splits_at_98(cars_root: Path) -> None:
    train = data.open("cars196", str(cars_root), "train")
    test = data.open("cars196", str(cars_root), "test")
    classes = np.array(CARS_CLASSES)
    assert len(train) == (classes <= 98).sum() and len(test) == (classes > 98).sum()
    assert train.labels.tolist() == (classes[classes <= 98] - 1).tolist()
    assert test.labels.tolist() == (classes[classes > 98] - 1).tolist()
    assert test.class_names[195] == "Make Model 196 2012"
    assert Path(test.paths[0]).name == "000006.jpg" and test.ids[0] == 6
    assert test[0][0].shape == (3, 224, 224)


def test_sop_keeps_class_and_super_class_labels(sop_root: Path) -> None:
    train = data.open("sop", str(sop_root), "train")
    test = data.open("sop", str(sop_root), "test")
    assert len(train) == len(SOP_TRAIN) and len(test) == len(SOP_TEST)
    assert train.labels.tolist() == [c - 1 for c, _, _ in SOP_TRAIN]
    assert test.super_labels.tolist() == [s - 1 for _, s, _ in SOP_TEST]
    assert test.super_class_names == {0: "bicycle", 2: "chair"}
    assert not set(train.labels) & set(test.labels)
    assert test.ids.tolist() == list(range(8, 13))
    sub = test.subset(np.array([4, 0]))
    assert sub.super_labels.tolist() == [2, 0] and sub.ids.tolist() == [12, 8]


def test_inshop_query_and_gallery_share_item_labels(inshop_root: Path) -> None:
    splits = {s: data.open("inshop", str(inshop_root), s) for s in ("train", "query", "gallery")}
    assert [len(splits[s]) for s in ("train", "query", "gallery")] == [3, 2, 4]
    assert splits["train"].labels.tolist() == [0, 0, 1]  # id_1, id_3 in id order
    names = splits["gallery"].class_names
    query = splits["query"]
    assert [query.class_names[x] for x in query.labels] == ["id_00000002", "id_00000005"]
    assert {names[x] for x in splits["gallery"].labels} == {
        item for item, s in INSHOP if s == "gallery"
    }
    assert set(query.labels) <= set(splits["gallery"].labels)
    assert not set(splits["train"].labels) & set(splits["gallery"].labels)
    assert len(data.open("inshop", str(inshop_root), "test")) == 2  # test = query
    with pytest.raises(DataError, match="unknown split 'val'"):
        data.open("inshop", str(inshop_root), "val")


def test_inshop_count_line_is_checked(inshop_root: Path) -> None:
    path = inshop_root / "Eval" / "list_eval_partition.txt"
    path.write_text(path.read_text().replace(str(len(INSHOP)), "99", 1))
    with pytest.raises(DataError, match="announces 99 images but lists 9"):
        data.open("inshop", str(inshop_root), "train")


def test_cifar10_official_split_and_labels(cifar10_root: Path) -> None:
    train = data.open("cifar10", str(cifar10_root), "train")
    test = data.open("cifar10", str(cifar10_root), "test")
    assert len(train) == 6000 and len(test) == 1000
    assert train.image_shape == (3, 32, 32)
    # the first byte of each image row was set to its label when the batches were written
    assert (train.images[:, 0, 0, 0].numpy() == train.labels).all()
    assert (test.images[:, 0, 0, 0].numpy() == test.labels).all()
    assert test.ids.min() == 6000 and train.class_names[9] == "truck"


def test_cifar10_hash1k_protocol_is_balanced_disjoint_and_recorded(cifar10_root: Path) -> None:
    root = str(cifar10_root)
    split = {s: data.open("cifar10_hash1k", root, s) for s in ("query", "train", "database")}
    assert [len(split[s]) for s in ("query", "train", "database")] == [1000, 5000, 1000]
    assert (np.bincount(split["query"].labels) == 100).all()
    assert (np.bincount(split["train"].labels) == 500).all()
    ids = [set(split[s].ids.tolist()) for s in ("query", "train", "database")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == set(range(7000))
    record = cifar10_root / "cifar-10-batches-py" / "deepembed-cifar10_hash1k-split.npz"
    assert record.is_file()
    with np.load(record) as f:
        assert np.array_equal(f["query"], split["query"].ids)
    # a later open reads the record, whatever the run's seed
    again = data.open("cifar10_hash1k", root, "test", seed=5)
    assert np.array_equal(again.ids, split["query"].ids)
    assert (split["query"].images[:, 0, 0, 0].numpy() == split["query"].labels).all()


def test_cifar10_hash10k_protocol(cifar10_root: Path) -> None:
    query = data.open("cifar10_hash10k", str(cifar10_root), "query")
    train = data.open("cifar10_hash10k", str(cifar10_root), "train")
    database = data.open("cifar10_hash10k", str(cifar10_root), "database")
    assert len(query) == 1000 and np.array_equal(train.ids, database.ids) and len(train) == 6000


def test_cifar100_fine_labels(cifar100_root: Path) -> None:
    train = data.open("cifar100", str(cifar100_root), "train")
    test = data.open("cifar100", str(cifar100_root / "cifar-100-python"), "test")
    assert len(train) == 300 and len(test) == 100
    assert (train.images[:, 0, 0, 0].numpy() == train.labels).all()
    assert train.class_names[42] == "c42"


def test_missing_cifar_names_file_and_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing CIFAR file .*data_batch_1.*data prepare cifar10"):
        data.open("cifar10", str(tmp_path), "train")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(f">HBB{array.ndim}I", 0, 8, array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.mark.parametrize("name", ["kmnist", "mnist"])
def test_idx_sources_class_disjoint(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n, dtype=np.uint8) % 10
        _write_idx(
            tmp_path / f"{split}-images-idx3-ubyte.gz",
            rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        )
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    train = data.open(name, str(tmp_path), "train")
    test = data.open(name, str(tmp_path), "test", eval_per_source=10)
    assert len(train) == 30 and set(train.labels) == {0, 1, 2, 3, 4}
    assert len(test) == 10 and set(test.labels) <= {5, 6, 7, 8, 9}
    if name == "kmnist":
        assert train.class_names[1] == "kmnist/ki"


def test_kmnist_without_root_says_how_to_get_it() -> None:
    with pytest.raises(DataError, match="data prepare kmnist"):
        data.open("kmnist")


def test_folder_with_and_without_split_folders(tmp_path: Path) -> None:
    for i, name in enumerate(["cat", "dog", "eel"]):
        for j in range(2 + i):
            write_image(tmp_path / "flat" / name / f"{j}.png", seed=j)
            write_image(
                tmp_path / "split" / ("train" if i < 2 else "test") / name / "sub" / f"{j}.jpg",
                seed=j,
            )
    (tmp_path / "flat" / "dog" / "notes.txt").write_text("not an image")
    flat_train = data.open("folder", str(tmp_path / "flat"), "train", transform="small")
    flat_test = data.open("folder", str(tmp_path / "flat"), "test", transform="small")
    assert flat_train.labels.tolist() == [0, 0, 1, 1, 1] and flat_test.labels.tolist() == [2] * 4
    assert flat_train[0][0].shape == (3, 32, 32) and flat_train.image_shape == (3, 32, 32)
    assert len(data.open("folder", str(tmp_path / "flat"), "all")) == 9
    test = data.open("folder", str(tmp_path / "split"), "test")
    assert test.labels.tolist() == [2] * 4 and test.class_names == {0: "cat", 1: "dog", 2: "eel"}
    with pytest.raises(DataError, match="no split folder 'query'"):
        data.open("folder", str(tmp_path / "split"), "query")


def test_csv_with_split_column_and_header(tmp_path: Path) -> None:
    for j in range(4):
        write_image(tmp_path / "imgs" / f"{j}.png", seed=j)
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nimgs/0.png,10,train\nimgs/1.png,2,train\nimgs/2.png,2,test\n"
        "imgs/3.png,10,test\n"
    )
    train = data.open("csv", str(tmp_path), "train")
    assert train.labels.tolist() == [1, 0]  # "2" < "10" numerically
    assert train.class_names == {0: "2", 1: "10"}
    test = data.open("csv", str(tmp_path / "labels.csv"), "test")
    assert Path(test.paths[0]).name == "2.png" and len(test) == 2


def test_csv_without_split_halves_classes(tmp_path: Path) -> None:
    rows = []
    for j, label in enumerate(["b", "a", "c", "a"]):
        write_image(tmp_path / f"{j}.jpg", seed=j)
        rows.append(f"{j}.jpg,{label}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    train = data.open("csv", str(tmp_path / "data.csv"), "train")
    test = data.open("csv", str(tmp_path / "data.csv"), "test")
    assert train.labels.tolist() == [1, 0, 0] and test.labels.tolist() == [2]


def test_file_datasets_need_a_root() -> None:
    with pytest.raises(DataError, match="needs a root directory"):
        data.open("sop")
