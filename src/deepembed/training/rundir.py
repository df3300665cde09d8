"""The run directory: never replaced by accident, and the one place skipped images are listed."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from deepembed import data
from deepembed.config import RunConfig, load_config, to_dict
from deepembed.data.images import SkipLog
from deepembed.errors import ConfigError
from deepembed.training.checkpoint import config_differences

if TYPE_CHECKING:
    from deepembed.training.trainer import Splits


def partial_dir(run_dir: Path) -> Path:
    """Where a run is written until it finishes: `<output_dir>/.<name>.partial`. A killed
    run leaves it (with its checkpoints) for `deepembed train --resume <run_dir>`."""
    return run_dir.parent / f".{run_dir.name}.partial"


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an existing run, or to start over an interrupted one, unless asked."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(
            f"run directory {run_dir} already exists; pass --overwrite to replace it (the old "
            f"run stays until the new one finishes) or choose another name=..."
        )
    if partial_dir(run_dir).exists() and not overwrite:
        raise ConfigError(
            f"an interrupted run of {run_dir} is in {partial_dir(run_dir)}: continue it with "
            f"`deepembed train --resume {run_dir}` or start afresh with --overwrite"
        )


def resume_dir(run_dir: Path) -> Path:
    """The unfinished run `--resume RUN_DIR` continues (RUN_DIR or its partial directory)."""
    run_dir = Path(run_dir)
    if run_dir.name.startswith(".") and run_dir.name.endswith(".partial"):
        stage = run_dir
    else:
        stage = partial_dir(run_dir)
    if stage.is_dir():
        return stage
    if (run_dir / "metrics.json").is_file():
        raise ConfigError(
            f"--resume {run_dir}: that run has finished; nothing to resume "
            f"(start a new run with another name=...)"
        )
    raise ConfigError(f"--resume {run_dir}: no interrupted run there (no {stage})")


def finish_run(stage: Path, run_dir: Path) -> None:
    """Move the finished run from `stage` to `run_dir`, replacing an older run only now: the
    old directory is renamed aside first, so one complete run is on disk at every instant."""
    old = stage.with_name(stage.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if run_dir.exists():
        os.replace(run_dir, old)
    os.replace(stage, run_dir)
    shutil.rmtree(old, ignore_errors=True)


def attach_skip_log(splits: Splits, path: Path) -> SkipLog:
    """One skip log for every image-file split; files dropped at open time go in first."""
    skip_log = SkipLog(path)
    for dataset in (splits.train, splits.val, splits.query, splits.gallery):
        if isinstance(dataset, data.ImageFileDataset):
            dataset.skip_log = skip_log
            for file, reason in dataset.problems.problems:
                skip_log.record(file, reason)
    return skip_log


class SkipReporter:
    """Prints one line for images newly skipped since the last report (never per image)."""

    def __init__(self, skip_log: SkipLog, final_path: Path) -> None:
        self.skip_log, self.final_path = skip_log, final_path
        self.reported = len(skip_log.entries())  # open-time drops were reported by data.open

    def report(self) -> None:
        entries = list(self.skip_log.entries())
        new = entries[self.reported :]
        if new:
            shown = ", ".join(new[:3]) + (", ..." if len(new) > 3 else "")
            tqdm.write(
                f"skipped {len(new)} unreadable image(s) (data.on_error=skip): {shown}; "
                f"all listed in {self.final_path}"
            )
        self.reported = len(entries)


def resume_config(
    run_dir: str | Path, config_path: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """The config of the interrupted run at `run_dir`, or the config file / overrides given
    with --resume, which may change only how the run executes (RESUMABLE_CHANGES)."""
    wanted = None
    if config_path is not None or overrides:
        wanted = load_config(config_path or resume_dir(Path(run_dir)) / "config.yaml", overrides)
    return check_resumable(Path(run_dir), wanted)


def check_resumable(run_dir: Path, wanted: RunConfig | None = None) -> RunConfig:
    """The config to continue the interrupted run at `run_dir` with: its own, or `wanted`
    when that differs only in RESUMABLE_CHANGES (else a ConfigError naming the keys)."""
    stage = resume_dir(run_dir)
    saved = load_config(stage / "config.yaml")
    if wanted is not None:
        differences = config_differences(to_dict(saved), to_dict(wanted))
        if differences:
            raise ConfigError(
                f"--resume {run_dir}: the run was started with another config; differing "
                "keys: " + "; ".join(differences)
            )
        saved = wanted
    # the run continues where it is now, even if its directory was moved
    name = stage.name.removeprefix(".").removesuffix(".partial")
    train_config = dataclasses.replace(saved.train, resume=str(run_dir))
    return dataclasses.replace(saved, name=name, output_dir=str(stage.parent), train=train_config)
