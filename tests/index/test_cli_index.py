"""deepembed index build | add | remove | info | tune and deepembed search, through typer's
CliRunner: results checked against the library, bad input one line with exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepembed import index
from deepembed.cli.main import app
from deepembed.inference import Embeddings
from tests.index.conftest import clustered, write_images

runner = CliRunner()


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def assert_user_error(code: int, output: str, needle: str) -> None:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), output
    assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def run(tmp_path: Path, pixel_models: tuple[Path, Path]) -> Path:
    """A run directory: model/ (the fake pixel model), embeddings/gallery.npz (8-d), images."""
    (tmp_path / "run" / "embeddings").mkdir(parents=True)
    shutil.copytree(pixel_models[0], tmp_path / "run" / "model")
    vectors = clustered(300, 8)
    Embeddings(vectors, np.arange(300) % 3, np.arange(300), {0: "a", 1: "b", 2: "c"}).save(
        tmp_path / "run" / "embeddings" / "gallery.npz"
    )
    write_images(tmp_path / "images")
    return tmp_path / "run"


def test_build_info_search_remove(run: Path) -> None:
    code, output = invoke("index", "build", run, "--spec", "HNSW8", "--metric", "euclidean")
    assert code == 0 and "indexed 300 items (8-d, euclidean, HNSW8,Flat)" in output, output
    code, output = invoke("index", "info", run / "index")
    assert code == 0 and "faiss HNSW8,Flat (euclidean)" in output and '{"efSearch": 64}' in output
    code, output = invoke("search", run / "index", "--id", "4", "-k", "3", "--filter", "label=1")
    assert code == 0, output
    rows = [line.split() for line in output.splitlines()[2:]]
    assert output.splitlines()[0] == "query: item 4 (b)" and len(rows) == 3
    assert all(r[2:4] == ["1", "b"] for r in rows) and "4" not in [r[1] for r in rows]
    code, output = invoke("index", "remove", run / "index", "10", "11")
    assert code == 0 and "removed 2 items; 298 left" in output
    assert "tombstones  2" in invoke("index", "info", run / "index")[1]
    assert_user_error(*invoke("index", "remove", run / "index", "10"), "no item with id 10")
    assert_user_error(
        *invoke("search", run / "index", "--id", "4", "--filter", "colour=red"),
        "unknown filter key 'colour'",
    )
    assert_user_error(
        *invoke("search", run / "index", "--id", "4", "--param", "nprobe=3"),
        "'nprobe' does not apply to HNSW8,Flat",
    )


def test_build_from_codes_is_binary_by_default(tmp_path: Path) -> None:
    signs = np.where(clustered(100, 16) > 0, 1.0, -1.0).astype(np.float32)
    Embeddings.from_codes(signs, np.arange(100) % 2, np.arange(100)).save(tmp_path / "codes.npz")
    code, output = invoke("index", "build", tmp_path / "codes.npz", "--out", tmp_path / "b")
    assert code == 0 and "(16 bits, hamming, BFlat)" in output, output
    assert "2 bytes, stored in 4" in invoke("index", "info", tmp_path / "b")[1]
    code, output = invoke(
        "index", "build", tmp_path / "codes.npz", "--spec", "BIVF4", "--out", tmp_path / "c"
    )
    assert code == 0 and "BIVF4" in output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--spec", "IVF8,Florp"], "unknown index spec 'IVF8,Florp'"),
        (["--spec", "BIVF8_BHNSW8"], "'BIVF8_HNSW8'"),
        (["--spec", "IVF512,Flat"], "needs at least 512 vectors (512 lists), got 300"),
        (["--metric", "hamming"], "needs packed codes"),
        (["--uri", "http://127.0.0.1:1"], "cannot reach Milvus at http://127.0.0.1:1"),
    ],
)
def test_build_refusals_write_nothing(run: Path, args: list[str], needle: str) -> None:
    assert_user_error(*invoke("index", "build", run, *args), needle)
    assert not (run / "index").exists()


def test_add_images_then_search_by_image(run: Path) -> None:
    assert invoke("index", "build", run / "embeddings" / "gallery.npz")[0] == 0
    images = run.parent / "images"
    code, output = invoke("index", "add", run / "index", images, "-q")
    assert code == 0 and "added 12 images (0 already indexed); 312 items" in output, output
    again = invoke("index", "add", run / "index", images, "-q")[1]
    assert "added 0 images (12 already indexed); 312 items" in again
    opened = index.open(run / "index")
    item = opened.get([305])[0]
    assert (
        item.source == str(images / "green" / "1.png") and opened.class_names[item.label] == "green"
    )
    code, output = invoke("search", run / "index", "--image", images / "green" / "1.png", "-k", "2")
    assert code == 0, output
    first = output.splitlines()[2].split()
    assert first[1] == "305" and first[3] == "green" and float(first[-1]) < 1e-5


def test_add_from_csv_with_metadata_and_bad_images(run: Path) -> None:
    assert invoke("index", "build", run, "--spec", "Flat")[0] == 0
    images = run.parent / "images"
    (images / "list.csv").write_text(
        "path,label,id,shop\nred/0.png,red,900,north\nblue/2.png,blue,901,south\n"
    )
    code, output = invoke("index", "add", run / "index", images / "list.csv", "-q")
    assert code == 0 and "added 2 images" in output, output
    opened = index.open(run / "index")
    assert opened.get([901])[0].metadata == {"shop": "south"}
    code, output = invoke(
        "search", run / "index", "--image", images / "red" / "0.png", "--filter", "shop=north"
    )
    assert output.splitlines()[2].split()[1] == "900" and len(output.splitlines()) == 3
    (images / "multi.csv").write_text("path,labels,split\ngreen/1.png,cat; dog,test\n")
    assert invoke("index", "add", run / "index", images / "multi.csv", "-q")[0] == 0
    opened.close()
    opened = index.open(run / "index")
    added = opened.get([opened.next_id() - 1])[0]
    assert added.metadata == {"labels": ["cat", "dog"], "split": "test"} and added.label == -1
    code, output = invoke("search", run / "index", "--id", "900", "--filter", "labels=dog")
    assert code == 0 and output.splitlines()[2].split()[1] == str(added.id), output
    (images / "broken.png").write_text("not an image")
    before = len(opened)
    opened.close()
    code, output = invoke("index", "add", run / "index", images, "-q")
    assert_user_error(code, output, "broken.png")
    assert len(index.open(run / "index")) == before  # nothing added


def test_tune_stores_the_fastest_setting_or_says_none_reaches(run: Path) -> None:
    assert invoke("index", "build", run, "--spec", "IVF16,Flat", "--metric", "euclidean")[0] == 0
    code, output = invoke("index", "tune", run / "index", "--recall", "0.9", "--sample", "100")
    assert code == 0 and 'stored {"nprobe": ' in output, output
    stored = index.open(run / "index").params["nprobe"]
    assert f'stored {{"nprobe": {stored}}}' in output and stored < 16
    assert invoke("index", "build", run, "--spec", "IVF16,PQ2", "--out", run / "pq")[0] == 0
    code, output = invoke("index", "tune", run / "pq", "--recall", "1.0", "--sample", "50")
    assert (
        code == 1
        and "no setting reaches recall@10 1.0" in output
        and "parameters unchanged" in output
    )
    assert index.open(run / "pq").params == {"nprobe": 16}
    assert invoke("index", "build", run, "--out", run / "flat")[0] == 0
    assert "no search parameters to tune" in invoke("index", "tune", run / "flat")[1]


def test_tune_on_held_out_queries(run: Path) -> None:
    assert invoke("index", "build", run, "--spec", "HNSW8", "--metric", "euclidean")[0] == 0
    Embeddings(clustered(60, 8, seed=4), np.zeros(60, int), np.arange(60)).save(run / "q.npz")
    code, output = invoke(
        "index", "tune", run / "index", "--recall", "0.9", "--queries", run / "q.npz"
    )
    assert code == 0 and 'stored {"efSearch": ' in output, output
    Embeddings(clustered(60, 4), np.zeros(60, int), np.arange(60)).save(run / "q4.npz")
    before = index.open(run / "index").params
    assert_user_error(
        *invoke("index", "tune", run / "index", "--queries", run / "q4.npz"), "(n, 8)"
    )
    assert index.open(run / "index").params == before


def test_every_command_on_a_milvus_lite_index(run: Path, tmp_path: Path) -> None:
    """build --uri, info, add, search (by id and image, filtered), remove; tune refused."""
    db = str(run / "index.db")  # beside model/: the run's model is found as for a directory
    code, output = invoke("index", "build", run, "--uri", db, "--spec", "FLAT")
    assert code == 0 and "indexed 300 items" in output, output
    code, output = invoke("index", "info", db)
    assert code == 0 and "milvus-lite FLAT" in output and "items       300" in output, output
    code, output = invoke("index", "add", db, tmp_path / "images", "-q")
    assert code == 0 and "added" in output, output
    added = len(index.open(db))
    code, output = invoke("search", db, "--id", "4", "-k", "3", "--filter", "label=1")
    rows = [line.split() for line in output.splitlines()[2:]]
    assert code == 0 and len(rows) == 3 and all(r[2] == "1" for r in rows), output
    code, output = invoke("search", db, "--image", tmp_path / "images" / "red" / "0.png", "-k", "2")
    assert code == 0 and len(output.splitlines()) == 4, output
    code, output = invoke("index", "remove", db, "10", "11")
    assert code == 0 and f"{added - 2} left" in output, output
    assert_user_error(*invoke("index", "tune", db), "index tune measures faiss indexes")
    assert_user_error(*invoke("index", "remove", db, "10"), "10")
    assert len(index.open(db)) == added - 2
