"""Index directories: catalogue.sqlite (the record), index.faiss (a snapshot) and meta.json.

meta.json (format_version 2) describes the index and the snapshot: the catalogue change it
reflects (`seq`), its size and CRC-32. Opening checks the snapshot against both and replays
the later changes; a missing, truncated or mismatched snapshot (or meta.json) is rebuilt
from the catalogue with a warning. Only a damaged catalogue is an error. Directories of the
first format (index.faiss + items.npz + meta.json, exact search only) are converted in place.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import faiss
import numpy as np

from deepembed.errors import DataError, ModelFormatError
from deepembed.index.catalogue import FILE as CATALOGUE
from deepembed.index.catalogue import Catalogue
from deepembed.index.faiss_index import FaissIndex
from deepembed.index.faiss_parts import deserialize
from deepembed.index.snapshot import StaleSnapshotError
from deepembed.io import atomic_dir, atomic_write, load_npz, problem, reading, write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
META, SNAPSHOT, LEGACY_ITEMS = "meta.json", "index.faiss", "items.npz"
COMPACT_AT = 0.2  # save() rebuilds a structure whose tombstones exceed this share


def write_snapshot(index: FaissIndex, folder: Path) -> None:
    """index.faiss, then meta.json naming its change, size and CRC: a crash between the two
    leaves a mismatch that the next open rebuilds, never a wrong index."""
    data, seq = index.serialize()
    atomic_write(folder / SNAPSHOT, lambda tmp: tmp.write_bytes(data))
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "faiss",
        "spec": index.spec,
        "metric": index.metric,
        "dim": index.dim,
        "count": len(index),
        "params": index.params,
        "class_names": {str(k): v for k, v in index.class_names.items()},
        "snapshot": {"seq": seq, "bytes": len(data), "crc32": zlib.crc32(data)},
    }
    write_json(folder / META, meta)
    index.snapshot_seq = seq


def save(index: FaissIndex, path: str | Path | None) -> Path:
    """A snapshot in the index's own directory; elsewhere, a whole new directory (written
    beside it, then renamed in). An in-memory index continues in the directory it is saved to;
    one with a directory stays there."""
    if path is None:
        if index.path is None:
            raise DataError("this index lives in memory: save(path) needs a directory")
        path = index.path
    path = Path(path)
    if index._live is not None and index.dead > COMPACT_AT * max(len(index._live), 1):
        index.compact()
    if index.path is not None and path.resolve() == index.path.resolve():
        write_snapshot(index, path)
        return path
    with atomic_dir(path) as tmp:
        index.catalogue.copy_to(tmp / CATALOGUE).close()
        write_snapshot(index, tmp)
    if index.path is None:
        index.bind(Catalogue.open(path / CATALOGUE), path, index.snapshot_seq or 0)
    return path


def _read_snapshot(index: FaissIndex, folder: Path) -> None:
    """Attach the snapshot of `folder` to `index`; StaleSnapshotError says why it cannot be."""
    if not (folder / META).is_file():
        raise StaleSnapshotError(f"{META} is missing")
    try:
        meta = json.loads((folder / META).read_text())
        snap = meta["snapshot"]
        seq, size, crc = int(snap["seq"]), int(snap["bytes"]), int(snap["crc32"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StaleSnapshotError(f"{META} is unreadable ({problem(exc)})") from None
    if (meta.get("spec"), meta.get("metric"), meta.get("dim")) != (
        index.spec,
        index.metric,
        index.dim,
    ):
        raise StaleSnapshotError(f"{META} describes another index than the catalogue")
    if not (folder / SNAPSHOT).is_file():
        raise StaleSnapshotError(f"{SNAPSHOT} is missing")
    data = (folder / SNAPSHOT).read_bytes()
    if len(data) != size:
        raise StaleSnapshotError(f"{SNAPSHOT} has {len(data)} bytes, {META} says {size}")
    if zlib.crc32(data) != crc:
        raise StaleSnapshotError(f"{SNAPSHOT} does not match the checksum in {META}")
    if seq > index.catalogue.last_seq:
        raise StaleSnapshotError(f"{SNAPSHOT} is newer than the catalogue")
    try:
        structure = deserialize(data, index.binary)
    except RuntimeError as exc:
        raise StaleSnapshotError(f"{SNAPSHOT} is unreadable ({problem(exc)})") from None
    index.attach(structure, seq)


def load(path: str | Path) -> FaissIndex:
    """Open an index directory (see the module docstring)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: index directory not found")
    if not (folder / CATALOGUE).exists():
        if (folder / LEGACY_ITEMS).exists() or _meta_version(folder) == 1:
            return _convert_legacy(folder)
        if not (folder / META).exists() and not (folder / SNAPSHOT).exists():
            raise ModelFormatError(f"{folder} is not an index directory (no {CATALOGUE})")
    catalogue = Catalogue.open(folder / CATALOGUE)
    version = catalogue.get("format_version")
    if version != FORMAT_VERSION or catalogue.get("kind") != "faiss":
        catalogue.close()
        raise ModelFormatError(
            f"{folder / CATALOGUE} has format_version {version}; "
            f"this deepembed reads {FORMAT_VERSION}"
        )
    index = FaissIndex(catalogue, folder)
    try:
        _read_snapshot(index, folder)
    except StaleSnapshotError as exc:
        index.rebuild(str(exc))
        try:
            write_snapshot(index, folder)
        except OSError as err:  # a read-only directory: the rebuilt index still serves
            log.warning("could not write the rebuilt snapshot to %s: %s", folder, err)
    return index


def _meta_version(folder: Path) -> object:
    """format_version of a readable meta.json, else None."""
    try:
        return json.loads((folder / META).read_text()).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None


def _convert_legacy(folder: Path) -> FaissIndex:
    """Read a first-format directory (exact index, ids and labels) into a catalogue."""
    files = meta_file, faiss_file, items_file = [folder / n for n in (META, SNAPSHOT, LEGACY_ITEMS)]
    for f in files:
        if not f.is_file():
            raise ModelFormatError(f"index directory {folder} is incomplete: no {f.name}")
    with reading(meta_file, "an index meta.json", ModelFormatError, (AttributeError, TypeError)):
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != 1:
            raise ModelFormatError(
                f"index {folder} has format_version {meta.get('format_version')}; "
                f"this deepembed reads {FORMAT_VERSION} (and converts 1)"
            )
        dim, metric = int(meta["dim"]), str(meta["metric"])
        names = {int(k): str(v) for k, v in meta.get("class_names", {}).items()}
    with reading(faiss_file, "a faiss index file", ModelFormatError, (RuntimeError,)):
        old = faiss.read_index(str(faiss_file))
        ids = faiss.vector_to_array(old.id_map).astype(np.int64)  # position -> id
        flat = faiss.downcast_index(old.index)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), old.ntotal * old.d).reshape(-1, old.d).copy()
    with (
        reading(items_file, "an index items .npz file", ModelFormatError),
        load_npz(items_file) as items,
    ):
        label_of = dict(zip(items["ids"].tolist(), items["labels"].tolist(), strict=True))
    if old.d != dim or set(label_of) != set(ids.tolist()):
        raise ModelFormatError(f"index {folder} is inconsistent (count or dimension)")
    index = FaissIndex.create(dim, metric, "Flat")
    index.add(vectors, ids, np.array([label_of[i] for i in ids.tolist()], np.int64))
    index.class_names = names
    try:
        index.save(folder)  # a new directory renamed over the old one
    except OSError as exc:
        log.warning("index %s is in the first format and could not be converted (%s)", folder, exc)
        return index
    log.warning(
        "converted index directory %s to format %d (with %s)", folder, FORMAT_VERSION, CATALOGUE
    )
    return index
