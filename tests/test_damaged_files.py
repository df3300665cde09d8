"""Every file reader answers a missing, empty, truncated or garbage file with one clear line.

One row per reader: how to write a valid file (or directory) under tmp_path, which file of it
to damage, and the call that reads it. Each row is crossed with the four damages; the reader
must raise a UserError whose message is one line naming the damaged file. Adding a reader is
adding one row.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepembed import data
from deepembed import index as index_lib
from deepembed.cli.main import app
from deepembed.config import load_config
from deepembed.errors import UserError
from deepembed.inference import Embeddings
from deepembed.models.embedder import Embedder, EmbedderSpec
from tests.data.conftest import (  # noqa: F401  (fixtures, requested by name below)
    cars_root,
    cifar10_root,
    cifar100_root,
    cub_root,
    inshop_root,
    sop_root,
    write_image,
)
from tests.index.conftest import write_legacy_index

Make = Callable[[Path, pytest.FixtureRequest], tuple[Path, Path]]


@dataclass(frozen=True)
class Reader:
    """A reader under test: make(tmp, request) -> (what the reader takes, file to damage).

    `may_read`: damages after which the file may legitimately still read (an optional file
    that may be absent, a list cut at a line end); otherwise reading it must fail cleanly.
    """

    name: str
    make: Make
    read: Callable[[Path], object]
    may_read: tuple[str, ...] = ()


# --- writers of valid files ------------------------------------------------------------------


def _embeddings(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 4)).astype(np.float32)
    return Embeddings(vectors, np.arange(12) % 3, np.arange(12), {0: "a"}).save(tmp / "e.npz")


def _index(tmp: Path) -> Path:
    return index_lib.build(Embeddings.load(_embeddings(tmp))).save(tmp / "index")


def _legacy_index(tmp: Path) -> Path:
    """A directory of the first index format (its index.faiss holds the only vectors)."""
    vectors = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    return write_legacy_index(tmp / "legacy", vectors, np.arange(12), np.arange(12) % 3)


def _open_copy(path: Path) -> object:
    """Open a copy of an index directory: reading a first-format one converts it in place.
    (Damage to a current one's index.faiss or meta.json is rebuilt: tests/index.)"""
    copy = Path(tempfile.mkdtemp(dir=path.parent)) / path.name
    shutil.copytree(path, copy)
    return index_lib.open(copy)


def _model(tmp: Path) -> Path:
    spec = EmbedderSpec(backbone_params={"widths": [4, 4, 4, 8, 8]}, embedding_dim=8)
    return Embedder(spec).save(tmp / "model")


# Fixed text, so its first half ends inside a key (a cut at a line end would leave a shorter
# valid config, which no reader can tell from one written that way).
CONFIG_YAML = """\
# a run of the demo's data with a smaller embedding
data:
  name: mnist30
  eval_per_source: 300
model:
  embedding_dim: 64
  normalize: true
train:
  epochs: 3
"""


def _config(tmp: Path) -> Path:
    path = tmp / "config.yaml"
    path.write_text(CONFIG_YAML)
    return path


def _csv(tmp: Path) -> Path:
    rows = []
    for j, label in enumerate(["cat", "dog", "cat", "dog", "eel", "eel"]):
        write_image(tmp / "imgs" / f"{j}.png", seed=j)
        rows.append(f"imgs/{j}.png,{label},{'train' if j < 4 else 'test'}")
    (tmp / "labels.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return tmp


def _idx(path: Path, array: np.ndarray) -> None:
    raw = struct.pack(f">HBB{array.ndim}I", 0, 8, array.ndim, *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _idx_root(tmp: Path, suffix: str) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        _idx(tmp / f"{split}-images-idx3-ubyte{suffix}", images)
        _idx(tmp / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % 10)
    return tmp


def _gz_pickle(path: Path, obj: object) -> None:
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f)


def _mnist_pickle(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    _gz_pickle(
        tmp / "mnist.pkl.gz",
        tuple((rng.random((20, 784), dtype=np.float32), np.arange(20) % 10) for _ in range(3)),
    )
    return tmp


def _animal(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    _gz_pickle(tmp / "animal_data_version_3.gz", rng.integers(0, 256, (30, 28, 28), np.uint8))
    _gz_pickle(tmp / "animal_label_version_3.gz", np.arange(30) % 10)
    return tmp


def _linked(source: Path, tmp: Path) -> Path:
    """A copy of a shared (module-scoped) dataset tree made of links: damage replaces a link."""
    tmp.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        target = tmp / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.symlink_to(path)
    return tmp


def fixture(name: str, victim: str, then: Callable[[Path], object] | None = None) -> Make:
    """A dataset tree from a conftest fixture (a link copy for shared ones), damaging `victim`;
    `then(root)` runs first where the file to damage is written by a first open."""

    def make(tmp: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
        root = request.getfixturevalue(name)
        if root != tmp:  # a module-scoped tree, shared with other tests
            root = _linked(root, tmp / "linked")
        if then is not None:
            then(root)
        return root, root / victim

    return make


def file(write: Callable[[Path], Path], victim: str = "") -> Make:
    """What `write(tmp)` returns is read; `victim` is the file inside it to damage ('' = it)."""

    def make(tmp: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
        target = write(tmp)
        return target, target / victim if victim else target

    return make


def dataset(name: str, split: str = "train") -> Callable[[Path], object]:
    """Open a split of dataset `name` under the given root."""
    return lambda root: data.open(name, str(root), split, transform="small")


READERS = [
    Reader("embeddings", file(_embeddings), Embeddings.load),
    Reader("index-catalogue", file(_index, "catalogue.sqlite"), index_lib.open),
    Reader("legacy-index-meta", file(_legacy_index, "meta.json"), _open_copy),
    Reader("legacy-index-faiss", file(_legacy_index, "index.faiss"), _open_copy),
    Reader("legacy-index-items", file(_legacy_index, "items.npz"), _open_copy),
    Reader("model-config", file(_model, "config.json"), Embedder.load),
    Reader("model-weights", file(_model, "model.safetensors"), Embedder.load),
    Reader("yaml-config", file(_config), load_config),
    Reader("csv", file(_csv, "labels.csv"), dataset("csv")),
    Reader("mnist-pickle", file(_mnist_pickle, "mnist.pkl.gz"), dataset("mnist")),
    Reader("animal-pickle", file(_animal, "animal_data_version_3.gz"), dataset("animal_mnist")),
    Reader(
        "idx-gz",
        file(lambda t: _idx_root(t, ".gz"), "train-images-idx3-ubyte.gz"),
        dataset("kmnist"),
    ),
    Reader(
        "idx-raw", file(lambda t: _idx_root(t, ""), "t10k-labels-idx1-ubyte"), dataset("kmnist")
    ),
    Reader("cub-images", fixture("cub_root", "CUB_200_2011/images.txt"), dataset("cub200")),
    Reader(
        "cub-labels",
        fixture("cub_root", "CUB_200_2011/image_class_labels.txt"),
        dataset("cub200"),
    ),
    Reader("cars-mat", fixture("cars_root", "cars_annos.mat"), dataset("cars196")),
    Reader(
        "cub-names",
        fixture("cub_root", "CUB_200_2011/classes.txt"),
        dataset("cub200"),
        # optional (names then come from the image folders); cut inside a name: a shorter name
        may_read=("missing", "truncated"),
    ),
    Reader(
        "sop-list",
        fixture("sop_root", "Ebay_train.txt"),
        dataset("sop"),
        may_read=("truncated",),  # cut at a line end: a shorter list (it has no count)
    ),
    Reader(
        "inshop-list", fixture("inshop_root", "Eval/list_eval_partition.txt"), dataset("inshop")
    ),
    Reader(
        "cifar10-batch",
        fixture("cifar10_root", "cifar-10-batches-py/data_batch_3"),
        dataset("cifar10"),
    ),
    Reader(
        "cifar10-meta",
        fixture("cifar10_root", "cifar-10-batches-py/batches.meta"),
        dataset("cifar10"),
    ),
    Reader(
        "cifar10-split",
        fixture(
            "cifar10_root",
            "cifar-10-batches-py/deepembed-cifar10_hash1k-split.npz",
            then=dataset("cifar10_hash1k", "query"),  # draws and records the split
        ),
        dataset("cifar10_hash1k", "query"),
        may_read=("missing",),  # drawn again (seeded: the same split) and recorded
    ),
    Reader(
        "cifar100-train", fixture("cifar100_root", "cifar-100-python/train"), dataset("cifar100")
    ),
]


# --- damages: each replaces the file (a link is replaced, never written through) --------------


def _replace(path: Path, content: bytes) -> None:
    path.unlink()
    path.write_bytes(content)


def missing(path: Path) -> None:
    path.unlink()


def empty(path: Path) -> None:
    _replace(path, b"")


def truncated(path: Path) -> None:
    content = path.read_bytes()
    _replace(path, content[: len(content) // 2])


def garbage(path: Path) -> None:
    size = max(path.stat().st_size, 64)
    _replace(path, np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())


DAMAGES = [missing, empty, truncated, garbage]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.name)
def test_damaged_file_is_one_line_user_error(
    reader: Reader, damage: Callable[[Path], None], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target, victim = reader.make(tmp_path, request)
    assert victim.is_file(), victim
    reader.read(target)  # the valid file reads
    damage(victim)
    try:
        reader.read(target)
    except UserError as exc:
        assert "\n" not in str(exc) and victim.name in str(exc), str(exc)
    else:
        assert damage.__name__ in reader.may_read, f"read a {damage.__name__} {victim.name}"


# --- the CLI: exit code 2, one `error:` line naming the file, no traceback ----------------------

runner = CliRunner()


def _cli_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_cli_evaluate_truncated_embeddings(tmp_path: Path) -> None:
    path = _embeddings(tmp_path)
    truncated(path)
    assert str(path) in _cli_error(["evaluate", str(path)])


def test_cli_search_damaged_index(tmp_path: Path) -> None:
    path = _index(tmp_path)
    garbage(path / "catalogue.sqlite")
    assert "catalogue.sqlite" in _cli_error(["search", str(path), "--id", "0"])
