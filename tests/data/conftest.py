"""Tiny copies of the benchmark datasets in exactly their official on-disk layouts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (12, 10), mode: str = "RGB"):
    """A small random image file; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """CUB_200_2011 with classes 1, 2, 100 (train) and 101, 200 (test), 2-3 images each."""
    base = tmp_path / "CUB_200_2011"
    classes = {
        1: "001.Black_footed_Albatross",
        2: "002.Laysan_Albatross",
        100: "100.Brown_Pelican",
        101: "101.White_Pelican",
        200: "200.Common_Yellowthroat",
    }
    images, labels, split = [], [], []
    image_id = 0
    for c, folder in classes.items():
        for j in range(3 if c in (2, 101) else 2):
            image_id += 1
            rel = f"{folder}/{folder[4:]}_{j:04d}_{image_id}.jpg"
            write_image(base / "images" / rel, seed=image_id)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {j % 2}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c} {n}" for c, n in classes.items()) + "\n")
    return tmp_path


CARS_CLASSES = [1, 1, 2, 98, 98, 99, 99, 150, 196, 196, 196]


@pytest.fixture
def cars_root(tmp_path: Path) -> Path:
    """cars_annos.mat (struct array `annotations`, cell `class_names`) and car_ims/."""
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(CARS_CLASSES)), dtype=[(f, "O") for f in fields])
    for i, c in enumerate(CARS_CLASSES):
        rel = f"car_ims/{i + 1:06d}.jpg"
        write_image(tmp_path / rel, seed=i)
        annotations[0, i] = (
            rel,
            np.uint8(1),
            np.uint8(2),
            np.uint16(11),
            np.uint8(9),
            np.uint8(c),
            np.uint8(i % 2),
        )
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Make Model {c} 2012" for c in range(1, 197)]
    scipy.io.savemat(
        tmp_path / "cars_annos.mat", {"annotations": annotations, "class_names": names}
    )
    return tmp_path


# (class_id, super_class_id, category folder) of the tiny SOP copy
SOP_TRAIN = [
    (1, 1, "bicycle_final"),
    (1, 1, "bicycle_final"),
    (2, 1, "bicycle_final"),
    (2, 1, "bicycle_final"),
    (3, 2, "cabinet_final"),
    (3, 2, "cabinet_final"),
    (4, 2, "cabinet_final"),
]
SOP_TEST = [
    (5, 1, "bicycle_final"),
    (5, 1, "bicycle_final"),
    (6, 3, "chair_final"),
    (6, 3, "chair_final"),
    (7, 3, "chair_final"),
]


@pytest.fixture
def sop_root(tmp_path: Path) -> Path:
    """Ebay_train.txt / Ebay_test.txt (with their header) and <category>_final/ images."""
    image_id = 0
    for name, rows in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        lines = ["image_id class_id super_class_id path"]
        for view, (c, s, folder) in enumerate(rows):
            image_id += 1
            rel = f"{folder}/{111085122870 + c}_{view}.JPG"
            write_image(tmp_path / rel, seed=image_id)
            lines.append(f"{image_id} {c} {s} {rel}")
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path


INSHOP = [
    ("id_00000001", "train"),
    ("id_00000001", "train"),
    ("id_00000003", "train"),
    ("id_00000002", "query"),
    ("id_00000002", "gallery"),
    ("id_00000002", "gallery"),
    ("id_00000005", "query"),
    ("id_00000005", "gallery"),
    ("id_00000004", "gallery"),
]


@pytest.fixture
def inshop_root(tmp_path: Path) -> Path:
    """Eval/list_eval_partition.txt (count line + header line) and img/... images."""
    lines = [str(len(INSHOP)), "image_name item_id evaluation_status"]
    for i, (item, status) in enumerate(INSHOP):
        rel = f"img/WOMEN/Dresses/{item}/{i:02d}_1_front.jpg"
        write_image(tmp_path / rel, seed=i)
        lines.append(f"{rel}           {item} {status}")
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def cifar_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """(N, 3072) uint8 rows whose first byte encodes the label (so tests can check it)."""
    data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    data[:, 0] = labels
    return data


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar-10-batches-py with 7,000 images (700 per class): 5 x 1,200 train + 1,000 test."""
    root = tmp_path_factory.mktemp("cifar10")
    base = root / "cifar-10-batches-py"
    base.mkdir()
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 700))
    for i in range(5):
        part = labels[i * 1200 : (i + 1) * 1200]
        _pickle(
            base / f"data_batch_{i + 1}",
            {
                b"batch_label": b"training batch",
                b"labels": part.tolist(),
                b"data": cifar_images(part, i),
                b"filenames": [b"x.png"] * len(part),
            },
        )
    test = labels[6000:]
    _pickle(base / "test_batch", {b"labels": test.tolist(), b"data": cifar_images(test, 9)})
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _pickle(base / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 1200})
    return root


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cifar-100-python with train (300) / test (100) / meta and fine + coarse labels."""
    root = tmp_path_factory.mktemp("cifar100")
    base = root / "cifar-100-python"
    base.mkdir()
    for name, n, seed in (("train", 300, 1), ("test", 100, 2)):
        fine = np.random.default_rng(seed).integers(0, 100, n)
        _pickle(
            base / name,
            {
                b"fine_labels": fine.tolist(),
                b"coarse_labels": (fine // 5).tolist(),
                b"data": cifar_images(fine, seed),
            },
        )
    _pickle(
        base / "meta",
        {
            b"fine_label_names": [f"c{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"s{i}".encode() for i in range(20)],
        },
    )
    return root
