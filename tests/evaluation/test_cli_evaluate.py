"""`deepembed evaluate` on embeddings files and on a model + dataset, against the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deepembed import data
from deepembed.cli.main import app
from deepembed.evaluation import evaluate
from deepembed.inference import Embeddings, embed
from deepembed.models.embedder import Embedder, EmbedderSpec

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def save_embeddings(path: Path, vectors: np.ndarray, labels: np.ndarray) -> Path:
    return Embeddings(vectors.astype(np.float32), labels, np.arange(len(labels))).save(path)


def test_query_gallery_files_with_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    g_labels, q_labels = np.repeat(np.arange(6), 5), np.repeat(np.arange(7), 2)
    gallery = rng.normal(size=(30, 8)) + 2 * np.eye(7, 8)[g_labels]
    query = rng.normal(size=(14, 8)) + 2 * np.eye(7, 8)[q_labels]
    q_file = save_embeddings(tmp_path / "embeddings" / "query.npz", query, q_labels)
    g_file = save_embeddings(tmp_path / "embeddings" / "gallery.npz", gallery, g_labels)
    names = "recall@1,recall@4,map,mrr"
    code, output = invoke("evaluate", q_file, "--gallery", g_file, "--metrics", names, "--plot")
    assert code == 0, output
    metrics = json.loads((tmp_path / "evaluation.json").read_text())
    want = evaluate(query, q_labels, gallery, g_labels, metrics=names.split(","))
    assert {k: metrics[k] for k in want} == pytest.approx(want)
    assert metrics["protocol"] == "query-gallery" and metrics["num_queries_excluded"] == 2
    with Image.open(tmp_path / "recall_at_k.png") as image:
        assert image.format == "PNG"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "nothing to evaluate"),
        (["--model", "m", "--query-split", "test"], "go together"),
        (["--metrics", "map@r", "--plot"], "--plot needs recall@K"),
    ],
)
def test_bad_usage_is_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    emb = save_embeddings(tmp_path / "e.npz", np.eye(4), np.array([0, 0, 1, 1]))
    args = [a if a != "m" else str(tmp_path) for a in args]
    code, output = invoke("evaluate", *([emb] if "--metrics" in args else []), *args)
    assert code == 2 and needle in output and len(output.strip().splitlines()) == 1, output


def test_model_and_dataset(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = EmbedderSpec(backbone_params={"widths": [4, 4, 4, 8, 8]}, embedding_dim=8)
    model_dir = Embedder(spec).save(tmp_path / "run" / "model")
    code, output = invoke(
        "evaluate", "--model", model_dir, "--eval-per-source", "20", "--metrics", "map@r", "-q"
    )
    assert code == 0, output
    metrics = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    items = data.open("mnist30", "", "test", 20)
    e = embed(Embedder.load(model_dir), items, progress=False)
    want = evaluate(e.vectors, e.labels, metrics=("map@r",))
    assert metrics["map@r"] == pytest.approx(want["map@r"])
    assert metrics["num_queries"] == want["num_queries"] == len(e) - want["num_queries_excluded"]
    assert metrics["split"] == "test" and metrics["protocol"] == "leave-one-out"
