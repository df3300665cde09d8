"""Resumable runs: a run killed with SIGKILL mid-epoch and resumed with `deepembed train
--resume` ends with the same weights, history and metrics as the uninterrupted run; bad
resumes are one-line errors; a truncated checkpoint falls back to the previous one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from deepembed.cli.main import app
from deepembed.config import load_config
from deepembed.training.checkpoint import checkpoint_paths
from deepembed.training.pipeline import train
from deepembed.training.rundir import partial_dir
from tests.conftest import TINY_RUN

runner = CliRunner()
# 2 epochs x 6 steps; checkpoints at global steps 4 (mid-epoch 1), 6 (epoch end), 8 (mid
# epoch 2), 12; the kill comes at step 10, so the resumed run redoes steps 9 and 10
RUN = [*TINY_RUN, "train.max_steps=6", "train.checkpoint_every=4", "train.keep_checkpoints=3"]
KILL_AT = 10
CASES = {
    # learned proxies (optimised at loss_lr), LR warm-up callback, batch augmentation drawn
    # from torch's global generator on the device side
    "proxies": ["loss.name=proxy_anchor", "miner.name=", "optim.warmup_steps=3"],
    # a cross-batch memory that must continue where it was
    "memory": ["loss.name=multi_similarity", "miner.name=", "loss.memory_size=48"],
}
KILLER = """
import os, signal, sys
from deepembed.config import load_config
from deepembed.training.callbacks import Callback
from deepembed.training.pipeline import train

class KillAt(Callback):
    def on_step_end(self, trainer):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

train(load_config("configs/mnist30.yaml", sys.argv[1:]), progress=False, callbacks=[KillAt()])
"""


def overrides(tmp_path: Path, name: str, case: str) -> list[str]:
    return [f"output_dir={tmp_path}", f"name={name}", *RUN, *CASES[case]]


def kill_mid_epoch(tmp_path: Path, name: str, case: str) -> Path:
    """Run in a subprocess that SIGKILLs itself after global step KILL_AT."""
    code = KILLER.format(step=KILL_AT)
    done = subprocess.run(
        [sys.executable, "-c", code, *overrides(tmp_path, name, case)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    return tmp_path / name


def comparable(run: Path) -> tuple[dict, list[dict]]:
    """metrics.json and history.jsonl without wall-clock figures."""
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.pop("timings")
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    for record in history:
        record.pop("train_images_per_s")
    return metrics, history


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(
    tmp_path: Path, case: str
) -> None:
    whole = train(load_config("configs/mnist30.yaml", overrides(tmp_path, "whole", case)), False)
    killed = kill_mid_epoch(tmp_path, "killed", case)
    stage = partial_dir(killed)
    assert not killed.exists() and stage.is_dir()
    assert [p.name for p in checkpoint_paths(stage)] == [
        "step-000000008.pt",
        "step-000000006.pt",
        "step-000000004.pt",
    ]
    result = runner.invoke(app, ["train", "--resume", str(killed), "-q"])
    assert result.exit_code == 0, result.output
    assert not stage.exists() and not (killed / "checkpoints").exists()
    ours, theirs = (
        load_file(killed / "model" / "model.safetensors"),
        load_file(whole.model_dir / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert comparable(killed) == comparable(whole.run_dir)


def test_resume_falls_back_from_a_truncated_checkpoint_and_refuses_bad_resumes(
    tmp_path: Path,
) -> None:
    killed = kill_mid_epoch(tmp_path, "killed", "proxies")
    stage = partial_dir(killed)
    # a new run of the same name would start over the interrupted one: refused
    result = runner.invoke(
        app, ["train", "configs/mnist30.yaml", *overrides(tmp_path, "killed", "proxies"), "-q"]
    )
    assert result.exit_code == 2 and "--resume" in result.output, result.output
    # a config that changes what the run computes: the differing keys are named
    result = runner.invoke(
        app, ["train", "--resume", str(killed), "model.embedding_dim=8", "loss.params.margin=0.2"]
    )
    assert result.exit_code == 2, result.output
    assert "model.embedding_dim: 16 -> 8" in result.output
    assert "loss.params.margin" in result.output and "Traceback" not in result.output
    # where it runs may change
    newest = checkpoint_paths(stage)[0]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    # (the config key does what --resume does)
    again = [*overrides(tmp_path, "killed", "proxies"), "train.threads=1", f"train.resume={killed}"]
    result = runner.invoke(app, ["train", "configs/mnist30.yaml", *again, "-q"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint {newest} is unreadable" in result.output
    assert (killed / "model" / "model.safetensors").is_file()
    # a finished run and a directory that never held a run
    result = runner.invoke(app, ["train", "--resume", str(killed)])
    assert result.exit_code == 2 and "has finished" in result.output, result.output
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no interrupted run" in result.output, result.output


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    stage = partial_dir(tmp_path / "early")
    stage.mkdir(parents=True)
    (stage / "config.yaml").write_text((Path("configs/mnist30.yaml")).read_text())
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "early")])
    assert result.exit_code == 2, result.output
    assert "nothing to resume from" in result.output and "no checkpoint" in result.output
