"""Every CLI command end to end on a small real mnist30 run, checked against brute force,
plus the bad inputs that must give one line and exit code 2 without damaging anything."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepembed import data
from deepembed import index as index_lib
from deepembed.cli.main import app
from deepembed.inference import Embeddings
from tests.conftest import TINY_RUN

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def assert_user_error(code: int, output: str, *needles: str) -> None:
    """Exit code 2 and one line of error text naming the problem, no traceback."""
    assert code == 2, output
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def cosine_neighbours(vectors: np.ndarray, exclude_self: bool) -> np.ndarray:
    """(N, N) gallery order by cosine distance, the obvious way (stable for ties)."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    dist = 1.0 - v @ v.T
    if exclude_self:
        np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")


def test_train_writes_a_complete_run(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "history.jsonl", "metrics.json", "model", "embeddings"} <= names
    config = (trained_run / "config.yaml").read_text()
    assert "train_per_class: 40" in config and "max_steps: 4" in config
    history = [
        json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()
    ]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all("test" in h and h["loss"] > 0 for h in history)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "nmi"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_queries"] == 450 and metrics["primary_metric"] == "map@r"


def test_embed_reproduces_the_run_embeddings(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    code, output = invoke(
        "embed", trained_run / "model", "--eval-per-source", "150", "--out", out, "-q"
    )
    assert code == 0, output
    ours, runs = Embeddings.load(out), Embeddings.load(trained_run / "embeddings" / "test.npz")
    assert ours.vectors.shape == (450, 16)
    assert np.allclose(ours.vectors, runs.vectors, atol=1e-5)
    assert np.array_equal(ours.labels, runs.labels) and np.array_equal(ours.ids, runs.ids)
    assert ours.class_names[15] == "fashion_mnist/sandal"


def test_evaluate_matches_brute_force(trained_run: Path, tmp_path: Path) -> None:
    emb = trained_run / "embeddings" / "test.npz"
    out = tmp_path / "metrics.json"
    code, output = invoke("evaluate", emb, "--metrics", "recall@1,recall@4", "--out", out)
    assert code == 0, output
    assert "recall@1" in output
    metrics = json.loads(out.read_text())
    e = Embeddings.load(emb)
    order = cosine_neighbours(e.vectors, exclude_self=True)
    hits = e.labels[order[:, :4]] == e.labels[:, None]
    assert metrics["recall@1"] == pytest.approx(hits[:, 0].mean())
    assert metrics["recall@4"] == pytest.approx(hits.any(1).mean())
    assert metrics["protocol"] == "leave-one-out"


def test_index_and_search_by_id_and_by_image(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    code, output = invoke("index", "build", run / "embeddings" / "test.npz")
    assert code == 0 and "indexed 450 items" in output, output
    e = Embeddings.load(run / "embeddings" / "test.npz")
    order = cosine_neighbours(e.vectors, exclude_self=True)

    code, output = invoke("search", run / "index", "--id", str(e.ids[10]), "-k", "3")
    assert code == 0, output
    rows = [line.split() for line in output.splitlines()[2:]]
    assert [int(r[1]) for r in rows] == list(e.ids[order[10, :3]])

    # An image file of test item 10 finds item 10 itself first, at distance ~0.
    image, _ = data.open("mnist30", split="test", eval_per_source=150)[10]
    png = tmp_path / "query.png"
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(png)
    code, output = invoke("search", run / "index", "--image", png, "-k", "2")
    assert code == 0, output
    first = output.splitlines()[2].split()
    assert int(first[1]) == e.ids[10] and float(first[-1]) < 1e-4


def test_plot_tsne(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tsne.png"
    code, output = invoke(
        "plot", "tsne", trained_run / "embeddings" / "test.npz", "--out", out, "--max-points", "200"
    )
    assert code == 0, output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 300


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["train"],
        ["embed"],
        ["evaluate"],
        ["index"],
        ["index", "build"],
        ["search"],
        ["plot"],
        ["plot", "tsne"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    code, output = invoke(*command, "--help")
    assert code == 0 and "Usage" in output


# ---- bad input: one line, exit code 2, nothing damaged -------------------------------


def test_missing_dataset_file(tmp_path: Path) -> None:
    code, output = invoke(
        "train",
        "configs/mnist30.yaml",
        f"output_dir={tmp_path}",
        f"data.root={tmp_path / 'empty'}",
        "-q",
        *TINY_RUN,
    )
    assert_user_error(code, output, "missing MNIST file", "mnist.pkl.gz", "pip install")


def test_unknown_config_key_leaves_existing_run_untouched(trained_run: Path) -> None:
    before = (trained_run / "config.yaml").read_text()
    code, output = invoke(
        "train",
        "configs/mnist30.yaml",
        f"output_dir={trained_run.parent}",
        "name=tiny",
        "train.epochz=1",
    )
    assert_user_error(code, output, "unknown config key 'train.epochz'")
    assert (trained_run / "config.yaml").read_text() == before


def test_query_file_that_is_not_an_image(trained_run: Path, tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is text, not a PNG")
    index_dir = tmp_path / "index"
    assert (
        invoke("index", "build", trained_run / "embeddings" / "test.npz", "--out", index_dir)[0]
        == 0
    )
    code, output = invoke("search", index_dir, "--image", fake, "--model", trained_run / "model")
    assert_user_error(code, output, "cannot read image", "notes.png")
    code, output = invoke(
        "search", index_dir, "--image", tmp_path / "none.jpg", "--model", trained_run / "model"
    )
    assert_user_error(code, output, "query image not found")


def test_empty_gallery_keeps_existing_index(trained_run: Path, tmp_path: Path) -> None:
    empty = Embeddings(
        np.empty((0, 16), np.float32), np.empty(0, np.int64), np.empty(0, np.int64)
    ).save(tmp_path / "empty.npz")
    index_dir = tmp_path / "index"
    assert (
        invoke("index", "build", trained_run / "embeddings" / "test.npz", "--out", index_dir)[0]
        == 0
    )
    before = (index_dir / "index.faiss").read_bytes()
    code, output = invoke("index", "build", empty, "--out", index_dir)
    assert_user_error(code, output, "empty gallery")
    assert (index_dir / "index.faiss").read_bytes() == before
    code, output = invoke(
        "evaluate",
        trained_run / "embeddings" / "test.npz",
        "--gallery",
        empty,
        "--out",
        tmp_path / "m.json",
    )
    assert_user_error(code, output, "empty gallery")
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("damage", ["incomplete", "incompatible"])
def test_broken_model_directory(trained_run: Path, tmp_path: Path, damage: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_run / "model", model)
    if damage == "incomplete":
        (model / "model.safetensors").unlink()
        needle = "incomplete: no model.safetensors"
    else:
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "format_version": 0}))
        needle = "format_version 0"
    code, output = invoke("embed", model, "--out", tmp_path / "e.npz", "-q")
    assert_user_error(code, output, needle)
    assert not (tmp_path / "e.npz").exists()


def test_console_script_exit_codes(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "deepembed"
    ok = subprocess.run([script, "--help"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "train" in ok.stdout
    bad = subprocess.run(
        [script, "evaluate", tmp_path / "none.npz"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"error: embeddings file not found: {tmp_path / 'none.npz'}"
    usage = subprocess.run([script, "search"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2  # missing argument: click's usage error


@pytest.fixture(scope="module")
def index_dir(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index over the run's test embeddings (450 items), built by the CLI."""
    out = tmp_path_factory.mktemp("search") / "index"
    code, output = invoke("index", "build", trained_run / "embeddings" / "test.npz", "--out", out)
    assert code == 0, output
    return out


@pytest.mark.parametrize("item", ["999999", "-1"])
def test_search_by_unknown_id(index_dir: Path, item: str) -> None:
    code, output = invoke("search", index_dir, "--id", item)
    assert_user_error(code, output, f"no item with id {item}")


@pytest.mark.parametrize("k", ["0", "-3"])
def test_search_with_k_below_one(index_dir: Path, k: str) -> None:
    code, output = invoke("search", index_dir, "--id", "0", "-k", k)
    assert_user_error(code, output, f"-k must be at least 1, got {k}")


@pytest.mark.parametrize("query", [[], ["--id", "0", "--image", "query.png"]])
def test_search_needs_exactly_one_query(index_dir: Path, query: list[str]) -> None:
    code, output = invoke("search", index_dir, *query)
    assert_user_error(code, output, "give exactly one of --image FILE or --id N")


# ---- unexpected failures: one line, exit code 1; DEEPEMBED_DEBUG=1 shows the traceback ----


def failing_index_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Make `index build` hit an unexpected error; returns an embeddings file to index."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(index_lib, "build", boom)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2])
    return Embeddings(vectors, labels=labels, ids=np.arange(6)).save(tmp_path / "e.npz")


def test_unexpected_failure_is_one_line_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DEEPEMBED_DEBUG", raising=False)
    embeddings = failing_index_build(monkeypatch, tmp_path)
    result = runner.invoke(app, ["index", "build", str(embeddings), "--out", str(tmp_path / "i")])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines == ["failed: RuntimeError: the disk is on fire (DEEPEMBED_DEBUG=1 for details)"], (
        result.output
    )
    assert isinstance(result.exception, SystemExit)  # handled: no exception escapes
    assert not (tmp_path / "i").exists()


def test_debug_lets_the_exception_through(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEEPEMBED_DEBUG", "1")
    embeddings = failing_index_build(monkeypatch, tmp_path)
    result = runner.invoke(app, ["index", "build", str(embeddings), "--out", str(tmp_path / "i")])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError), result.output
    assert str(result.exception) == "the disk is on fire"
    assert "failed:" not in result.output
