"""Multi-label CSV rows (header path,labels,split): a multi-hot label matrix that reaches
evaluation, where two items are relevant when they share a label."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deepembed import data
from deepembed.cli.main import app
from deepembed.cli.model import create_model
from deepembed.data.prepare import split_info
from deepembed.errors import DataError
from deepembed.inference import embed_split
from deepembed.models.embedder import Embedder
from tests.data.conftest import write_image

# label field of each test row; "" is an item without labels
TEST_LABELS = ["cat;dog", "dog", "bird", "cat", "bird ; fish", "fish", "", "dog;bird", "cat"]


def write_multilabel_csv(folder: Path, train_labels: list[str] = ()) -> Path:
    """Images and a labels.csv with multi-label rows: `train_labels` then TEST_LABELS."""
    rows = ["path,labels,split"]
    for j, (field, split) in enumerate(
        [(f, "train") for f in train_labels] + [(f, "test") for f in TEST_LABELS]
    ):
        write_image(folder / f"{j}.png", seed=j)
        rows.append(f'{j}.png,"{field}",{split}')
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_multilabel_rows_give_a_multi_hot_matrix(tmp_path: Path) -> None:
    test = data.open("csv", str(write_multilabel_csv(tmp_path)), "test")
    assert test.class_names == {0: "bird", 1: "cat", 2: "dog", 3: "fish"}
    assert test.labels.shape == (9, 4)
    assert test.labels[0].tolist() == [0, 1, 1, 0] and test.labels[4].tolist() == [1, 0, 0, 1]
    assert test.labels[6].tolist() == [0, 0, 0, 0]  # no labels
    _, label = test[0]
    assert isinstance(label, torch.Tensor) and label.tolist() == [0, 1, 1, 0]
    images, labels = data.collate([test[0], test[1]])
    assert images.shape[0] == 2 and labels.tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]


def test_single_label_csv_is_read_as_before(tmp_path: Path) -> None:
    rows = ["path,label,split"] + [f"{j}.png,a;b,test" for j in range(2)] + ["2.png,c,test"]
    for j in range(3):
        write_image(tmp_path / f"{j}.png", seed=j)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    test = data.open("csv", str(tmp_path), "test")
    assert test.labels.tolist() == [0, 0, 1] and test.class_names == {0: "a;b", 1: "c"}


def test_multilabel_rows_need_a_split_column(tmp_path: Path) -> None:
    write_image(tmp_path / "0.png")
    (tmp_path / "labels.csv").write_text("path,labels\n0.png,cat;dog\n")
    with pytest.raises(DataError, match="need a split column"):
        data.open("csv", str(tmp_path), "train")


def brute_force_map(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out mAP by loops: rank the others by cosine similarity; relevant = at least
    one shared label; queries with nothing relevant left out."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    aps = []
    for q in range(len(unit)):
        others = [j for j in range(len(unit)) if j != q]
        order = sorted(others, key=lambda j: -float(unit[q] @ unit[j]))
        hits, precisions = 0, []
        for rank, j in enumerate(order, 1):
            if any(labels[q][c] and labels[j][c] for c in range(labels.shape[1])):
                hits += 1
                precisions.append(hits / rank)
        if precisions:
            aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def test_cli_evaluate_on_a_multilabel_csv_is_multilabel_map(tmp_path: Path) -> None:
    root = write_multilabel_csv(tmp_path / "csv")
    model_dir = tmp_path / "model"
    create_model("small_cnn", model_dir, embedding_dim=8, image_size=32)
    out = tmp_path / "evaluation.json"
    args = ["--model", str(model_dir), "--dataset", "csv", "--root", str(root), "--split", "test"]
    result = CliRunner().invoke(
        app, ["evaluate", *args, "--metrics", "map", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["num_queries"] == 8 and written["num_queries_excluded"] == 1  # row ""
    got = written["map"]
    embedded = embed_split(Embedder.load(model_dir), "csv", str(root), "test")
    assert embedded.labels.shape == (9, 4)
    assert got == pytest.approx(brute_force_map(embedded.vectors, embedded.labels), abs=1e-6)


def test_data_info_counts_the_images_of_each_label(tmp_path: Path) -> None:
    info = split_info(data.open("csv", str(write_multilabel_csv(tmp_path)), "test"))
    assert info["images"] == 9 and info["classes"] == 4
    assert info["images_per_class"] == {"min": 2, "median": 3.0, "max": 3}
