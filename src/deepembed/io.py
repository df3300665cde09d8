"""Small file helpers: atomic writes, so an interrupted run never leaves a half-written file,
and `reading`, which turns a missing, empty, truncated or garbage file into one clear line."""

from __future__ import annotations

import csv
import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors import SafetensorError

from deepembed.errors import DataError, UserError


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it: once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _umask_mode(base: int) -> int:
    """`base` (0o666 files, 0o777 dirs) less the umask: what open()/mkdir() would give, where
    mkstemp/mkdtemp give 0o600/0o700."""
    return base & ~_UMASK


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    """Call write(tmp) on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(_umask_mode(0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, data: Any) -> Path:
    """Atomically write `data` as indented JSON."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success it replaces `path` whole.

    On error the temp directory is removed and an existing `path` is left as it was. The old
    directory is renamed aside before the new one is renamed in, so at every instant one of
    them is complete on disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(_umask_mode(0o777))
    old = tmp.with_name(tmp.name + ".old")
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# What parsers raise on a truncated or garbage file (numpy, zipfile, gzip, json, csv, yaml,
# pickle, struct, safetensors). KeyError: an archive without an expected member.
FORMAT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    struct.error,
    zipfile.BadZipFile,
    csv.Error,
    pickle.UnpicklingError,
    yaml.YAMLError,
    SafetensorError,
)
# What else unpickling random bytes raises (pickle opcodes build arbitrary objects).
PICKLE_ERRORS: tuple[type[BaseException], ...] = (
    AttributeError,
    ImportError,
    IndexError,
    TypeError,
)
_CPP_LOCATION = re.compile(r"^Error in .*? at \S+:\d+: ")  # faiss's C++ exception prefix


def problem(exc: BaseException, limit: int = 160) -> str:
    """One short line saying what a parser complained about."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = _CPP_LOCATION.sub("", " ".join(text.split())) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def reading(
    path: str | Path,
    what: str,
    error: type[UserError] = DataError,
    also: tuple[type[BaseException], ...] = (),
) -> Iterator[Path]:
    """Guard the reading of one file: damage becomes `error`, one line naming the file.

    Before the block: a missing path -> "<path>: not found", an empty file -> "<path>: file
    is empty". In the block: FORMAT_ERRORS (and `also`) -> "<path>: truncated or not <what>
    (<the parser's complaint>)". UserErrors raised in the block pass through unchanged.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: not found")
    if not path.is_file():
        raise error(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise error(f"{path}: file is empty")
    try:
        yield path
    except UserError:
        raise
    except (*FORMAT_ERRORS, *also) as exc:
        raise error(f"{path}: truncated or not {what} ({problem(exc)})") from exc


def load_npz(path: Path) -> np.lib.npyio.NpzFile:
    """np.load of an .npz archive, without pickles; anything else raises BadZipFile.

    (np.load would take a non-zip file for a pickle and suggest loading it unsafely.)
    """
    if not zipfile.is_zipfile(path):
        raise zipfile.BadZipFile("File is not a zip file")
    return np.load(path, allow_pickle=False)
