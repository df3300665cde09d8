"""A finished run directory survives every bad input byte for byte: a failed `train` (bad
config, bad data, a loss and miner that do not fit, a failure mid-training) and `evaluate`
without --out leave each of its files as it was; only --overwrite replaces it, and only once
the new run has finished."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepembed.cli.main import app
from deepembed.training.rundir import partial_dir
from tests.conftest import TINY_RUN
from tests.data.conftest import write_image

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below `folder` (hidden ones included)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def finished(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of a finished run: tmp_path/runs/tiny."""
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(trained_run, run)
    return run


def train(run: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        [
            "train",
            "configs/mnist30.yaml",
            f"output_dir={run.parent}",
            f"name={run.name}",
            "-q",
            *TINY_RUN,
            *args,
        ],
    )
    return result.exit_code, result.output


def folder_dataset(root: Path, corrupt: int = 0) -> Path:
    """root/{train,test}/<class>/ with 8 small images per class; `corrupt` train images of
    class a0 are truncated files (found only when decoded, not by an existence check)."""
    for split, classes in (("train", ("a0", "a1", "a2", "a3", "a4", "a5")), ("test", ("b0", "b1"))):
        for c in classes:
            for i in range(8):
                write_image(root / split / c / f"{i}.png", seed=i, size=(20, 20))
    for i in range(corrupt):
        path = root / "train" / "a0" / f"{i}.png"
        path.write_bytes(path.read_bytes()[:40])
    return root


BAD_TRAINS = {
    "no --overwrite": ([], "--overwrite"),
    "empty folder dataset": (
        ["--overwrite", "data.name=folder", "data.root={empty}"],
        "no class sub-folders",
    ),
    "loss and miner": (
        ["--overwrite", "loss.name=contrastive", "miner.name=batch_hard"],
        "loss.name='contrastive'",
    ),
    "unknown loss parameter": (["--overwrite", "loss.params.bogus=1"], "loss.params"),
    "bad miner parameter": (
        ["--overwrite", "miner.name=multi_similarity", "miner.params.nope=2"],
        "miner.params",
    ),
    "unknown key": (["--overwrite", "train.nope=1"], "train.nope"),
    "zero epochs": (["--overwrite", "train.epochs=0"], "train.epochs"),
    "schedule": (["--overwrite", "optim.schedule=sawtooth"], "optim.schedule"),
    "memory with a class loss": (
        ["--overwrite", "loss.name=arcface", "loss.memory_size=64", "miner.name="],
        "loss.memory_size",
    ),
    "unknown metric": (["--overwrite", "eval.metrics=[recall@1,nope]"], "eval.metrics"),
    "unknown distance": (["--overwrite", "eval.distance=manhattan"], "eval.distance"),
    "removed key": (["--overwrite", "data.transform=small"], "data.transform"),
    "unknown pooling": (["--overwrite", "model.pool=median"], "model.pool"),
    "input size the backbone cannot take": (
        [
            "--overwrite",
            "model.backbone=timm/vit_tiny_patch16_224",
            "model.backbone_params={{}}",  # {} after .format(): drops TINY_RUN's widths
            "model.pretrained=false",
            "model.image_size=64",
        ],
        "cannot take 64x64 input",
    ),
    "unknown backbone": (["--overwrite", "model.backbone=resnet9000"], "timm/<architecture>"),
    "no positive pairs": (["--overwrite", "sampler.images_per_class=1"], "images_per_class"),
    "backbone parameters": (
        ["--overwrite", "model.backbone_params.widths=[4]"],
        "model.backbone_params",
    ),
    "bad pixel limit": (
        ["--overwrite", "data.name=folder", "data.root={data}", "data.max_image_pixels=0"],
        "data.max_image_pixels",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TRAINS))
def test_failed_train_leaves_the_run_as_it_was(finished: Path, tmp_path: Path, case: str) -> None:
    args, needle = BAD_TRAINS[case]
    (tmp_path / "empty").mkdir()
    data_root = folder_dataset(tmp_path / "data")
    args = [a.format(empty=tmp_path / "empty", data=data_root) for a in args]
    before = snapshot(finished.parent)
    code, output = train(finished, *args)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], output
    assert snapshot(finished.parent) == before  # no file changed, none added (no staging dir)


def test_both_keys_named_for_a_loss_and_miner_that_do_not_fit(finished: Path) -> None:
    code, output = train(
        finished, "--overwrite", "loss.name=triplet", "miner.name=multi_similarity"
    )
    assert (
        code == 2 and "miner.name='multi_similarity'" in output and "loss.name='triplet'" in output
    )
    assert "batch_hard" in output  # names the miners that do fit


def test_failure_mid_training_leaves_the_run_as_it_was(finished: Path, tmp_path: Path) -> None:
    """Unreadable images are only found when decoded, after training has started."""
    root = folder_dataset(tmp_path / "data", corrupt=3)
    before = snapshot(finished.parent)
    code, output = train(finished, "--overwrite", "data.name=folder", f"data.root={root}")
    assert code == 2 and "cannot read image" in output, output
    assert snapshot(finished.parent) == before


def test_overwrite_replaces_the_run_once_finished(finished: Path) -> None:
    old_config = (finished / "config.yaml").read_text()
    code, output = train(finished, "--overwrite", "train.seed=1", "train.epochs=1")
    assert code == 0, output
    config = (finished / "config.yaml").read_text()
    assert config != old_config and "seed: 1" in config and "epochs: 1" in config
    history = (finished / "history.jsonl").read_text().splitlines()
    assert len(history) == 1  # the old run's two epochs are gone with it
    assert sorted(p.name for p in finished.parent.iterdir()) == ["tiny"]  # nothing left aside


def test_evaluate_keeps_the_training_metrics(finished: Path) -> None:
    metrics = finished / "metrics.json"
    before = metrics.read_bytes()
    result = runner.invoke(app, ["evaluate", str(finished / "embeddings" / "test.npz"), "-q"])
    assert result.exit_code == 0, result.output
    assert metrics.read_bytes() == before
    assert json.loads(before)["selection"]  # training's own keys are still there
    evaluation = json.loads((finished / "evaluation.json").read_text())
    assert evaluation["map@r"] == pytest.approx(json.loads(before)["map@r"], abs=1e-6)


def test_skipped_images_are_reported_once_and_listed(tmp_path: Path) -> None:
    """on_error=skip: one summary line for the whole run (not one per image, per epoch, inside
    the progress bar), and every skipped file listed in the run's skipped.txt."""
    root = folder_dataset(tmp_path / "data", corrupt=3)
    run = tmp_path / "runs" / "skips"
    code, output = train(
        run, "data.name=folder", f"data.root={root}", "data.on_error=skip", "train.epochs=3"
    )
    assert code == 0, output
    summaries = [line for line in output.splitlines() if line.startswith("skipped")]
    assert len(summaries) == 1 and "3 unreadable image(s)" in summaries[0], output
    assert f"{run}/skipped.txt" in summaries[0] and "skipping" not in output
    listed = (run / "skipped.txt").read_text().splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in listed) == ["0.png", "1.png", "2.png"]


def test_terminated_run_keeps_its_checkpoints_and_the_finished_run(finished: Path) -> None:
    """SIGTERM (a scheduler's pre-emption) unwinds like Ctrl-C: exit 130, the finished run
    untouched, the interrupted one kept beside it with its checkpoints and the command that
    continues it."""
    before = snapshot(finished)
    command = [str(Path(sys.executable).parent / "deepembed"), "train", "configs/mnist30.yaml"]
    command += [f"output_dir={finished.parent}", f"name={finished.name}", "--overwrite", "-q"]
    command += ["train.epochs=50", "data.train_per_class=40", "data.eval_per_source=150"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = partial_dir(finished) / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints.is_dir() and any(checkpoints.glob("step-*.pt"))):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130 and "interrupted" in output, output
    assert f"deepembed train --resume {finished}" in output
    assert snapshot(finished) == before
    assert any(checkpoints.glob("step-*.pt"))
