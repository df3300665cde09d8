"""Training checkpoints: everything a killed run needs to continue exactly where it was.

A checkpoint is one torch file (`checkpoints/step-<global step>.pt` in the run directory)
holding the model, the objective's learned parameters (proxies, class weights, beta, a
cross-batch memory), optimizer, scheduler, AMP scaler, the position in the epoch (batches
are a function of seed, epoch and step: training/batches.py), the running epoch sums, the
history so far, every callback's state and every random generator. It is written to a
temporary file and renamed, so a checkpoint on disk is always complete; the newest `keep`
are kept. Loading falls back to an older checkpoint when the newest cannot be read.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepembed.errors import ConfigError

CHECKPOINT_DIR = "checkpoints"
FORMAT = 1
# keys that may change when a run is resumed: where and how fast it runs, not what it computes
RESUMABLE_CHANGES = (
    "train.resume",
    "train.device",
    "train.threads",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.num_workers",
    "data.cache_dir",
    "eval.batch_size",
)
_UNREADABLE = (
    RuntimeError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def rng_state() -> dict[str, Any]:
    """The state of every random generator a step may draw from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.random.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.random.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    """random.setstate wants tuples where a round trip may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    return sorted(directory.glob("step-*.pt"), reverse=True)


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as checkpoints/step-<global_step>.pt atomically; keep the newest `keep`."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{state['global_step']:09d}.pt"
    fd, tmp = tempfile.mkstemp(prefix=".step-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in checkpoint_paths(run_dir)[max(1, keep) :]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Any], Path, list[str]]:
    """(state, path, notes) of the newest readable checkpoint; `notes` says which newer ones
    were unreadable and skipped. ConfigError when there is none."""
    notes: list[str] = []
    for path in checkpoint_paths(run_dir):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ValueError("not a deepembed checkpoint")
        except _UNREADABLE as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            notes.append(f"checkpoint {path} is unreadable ({reason}); using the previous one")
            continue
        return state, path, notes
    found = "; ".join(notes) if notes else f"no checkpoint in {Path(run_dir) / CHECKPOINT_DIR}"
    raise ConfigError(f"--resume {run_dir}: nothing to resume from: {found}")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every config key that differs, except RESUMABLE_CHANGES and
    the run's name and place."""
    old_flat, new_flat = _flatten(saved), _flatten(new)
    skip = set(RESUMABLE_CHANGES) | {"name", "output_dir"}
    keys = sorted((old_flat.keys() | new_flat.keys()) - skip)
    return [
        f"{key}: {old_flat.get(key, '(unset)')!r} -> {new_flat.get(key, '(unset)')!r}"
        for key in keys
        if old_flat.get(key) != new_flat.get(key)
    ]
