"""Shared fixtures: offline mode, tiny synthetic data and one small real training run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub call fails fast: nothing downloads
# decoded-image caches and rendered datasets of this test session, never the user's
os.environ["DEEPEMBED_CACHE"] = tempfile.mkdtemp(prefix="deepembed-test-cache-")
os.environ["TORCH_HOME"] = os.path.join(os.environ["DEEPEMBED_CACHE"], "torch")
atexit.register(shutil.rmtree, os.environ["DEEPEMBED_CACHE"], ignore_errors=True)


def write_folder_dataset(
    root: Path, height: int, width: int, classes: int = 4, per: int = 6
) -> Path:
    """`root/c<k>/<i>.png`: `per` noisy RGB images of each class, class k around grey 60k."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per):
            pixels = np.clip(rng.normal(60 * c, 30, (height, width, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


# A training run small enough for the test suite, on the real mnist30 files. Its report
# (seconds of t-SNE) is left to the tests of the report, which ask for it.
TINY_RUN = [
    "eval.report=false",
    "data.train_per_class=40",
    "data.eval_per_source=150",
    "sampler.classes_per_batch=6",
    "sampler.images_per_class=4",
    "model.backbone_params.widths=[8,8,8,16,16]",
    "model.embedding_dim=16",
    "train.epochs=2",
    "train.max_steps=4",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run `deepembed train` once on a small subset of mnist30; tests read its directory."""
    from typer.testing import CliRunner

    from deepembed.cli.main import app

    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(
        app, ["train", "configs/mnist30.yaml", f"output_dir={out}", "name=tiny", "-q", *TINY_RUN]
    )
    assert result.exit_code == 0, result.output
    return out / "tiny"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
