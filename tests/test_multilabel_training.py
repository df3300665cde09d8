"""Training binary codes on multi-label rows (a CSV with a path,labels,split header): the
pairwise hashing losses take (B, C) label rows, batches are shuffled (sampler.kind=random),
and the run evaluates with multi-label relevance (a shared label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepembed.cli.main import app
from deepembed.config import load_config
from deepembed.errors import ConfigError
from deepembed.inference import Embeddings
from deepembed.training.pipeline import train
from tests.viz.helpers import grid_rows, section

COLOURS = ("red", "green", "blue")
SPLITS = {"train": 48, "val": 12, "query": 12, "database": 24}
QUICK = [
    "data.name=csv",
    "data.protocol=hashing",
    "sampler.kind=random",
    "sampler.classes_per_batch=4",
    "sampler.images_per_class=4",
    "model.backbone_params.widths=[8,8,8,16,16]",
    "model.image_size=16",
    "model.bits=16",
    "eval.metrics=[map]",
    "train.select=map",
]


@pytest.fixture(scope="module")
def colours_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images whose labels are the colour channels lit in them (1 or 2 of red/green/blue),
    in train / val / query / database splits."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    rows = ["path,labels,split"]
    for split, count in SPLITS.items():
        for j in range(count):
            lit = rng.choice(3, size=1 + j % 2, replace=False)
            pixels = rng.integers(0, 60, (16, 16, 3))
            pixels[:, :, lit] += 180
            name = f"{split}{j}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(root / name)
            rows.append(f'{name},"{";".join(COLOURS[c] for c in lit)}",{split}')
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def run(tmp_path: Path, root: Path, *overrides: str):
    config = load_config(
        "configs/hashing.yaml",
        [f"output_dir={tmp_path}", "name=ml", f"data.root={root}", *QUICK, *overrides],
    )
    return train(config, progress=False)


@pytest.mark.parametrize("loss", ["dpsh", "dsh", "csq"])
def test_pairwise_and_centre_losses_train_on_multilabel_rows(
    tmp_path: Path, colours_csv: Path, loss: str
) -> None:
    result = run(tmp_path, colours_csv, f"loss.name={loss}", "train.epochs=4")
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert 0 < result.metrics["map"] <= 1 and result.metrics["selection"] == "best val map"
    test = Embeddings.load(result.run_dir / "embeddings" / "test.npz")
    gallery = Embeddings.load(result.run_dir / "embeddings" / "gallery.npz")
    assert test.labels.shape == (12, 3) and gallery.labels.shape == (24, 3)
    # the report: results framed by a shared label, validation beside test, notes where a
    # part needs single labels
    page = (result.run_dir / "report.html").read_text()
    assert "could not be drawn" not in page and "needs single labels" in page
    assert "<th>validation</th>" in section(page, "metrics")
    q_row = {int(i): r for r, i in enumerate(test.ids)}
    g_row = {int(i): r for r, i in enumerate(gallery.ids)}
    for line in grid_rows(section(page, "retrieval-examples")):
        query = test.labels[q_row[line[0][1]]]
        for css, item, _ in line[1:]:
            shared = bool((query & gallery.labels[g_row[item]]).any())
            assert css == ("hit" if shared else "miss")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("loss.name=greedy_hash", "loss.name='greedy_hash'"),
        ("sampler.kind=pk", "sampler.kind=random"),
        ("miner.name=batch_hard", "miner.name='batch_hard'"),
    ],
)
def test_what_cannot_take_multilabel_rows_is_a_config_error(
    tmp_path: Path, colours_csv: Path, override: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        run(tmp_path, colours_csv, "loss.name=dpsh", override)


def test_cli_names_the_loss_in_one_line(tmp_path: Path, colours_csv: Path) -> None:
    args = [f"output_dir={tmp_path}", f"data.root={colours_csv}", *QUICK, "loss.name=greedy_hash"]
    result = CliRunner().invoke(app, ["train", "configs/hashing.yaml", *args, "-q"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "greedy_hash" in lines[0] and "dpsh" in lines[0], result.output
