"""FaissIndex: the Index protocol on faiss, every change recorded in a Catalogue first.

Add and remove validate everything, commit to the catalogue, then change the faiss
structure: a refused call changes nothing, an acknowledged one is on disk. Types that cannot
remove (HNSW, refine, BHNSW, BHash) keep tombstones: a per-position `live` mask applied at
search by an IDSelector (BHash, which takes no selector: over-fetch and drop), dropped when
the structure is rebuilt from the catalogue (`compact`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deepembed.errors import DataError
from deepembed.index import checks
from deepembed.index import faiss_parts as fp
from deepembed.index.base import Item
from deepembed.index.catalogue import Catalogue
from deepembed.index.snapshot import StaleSnapshotError, snapshot_live
from deepembed.index.specs import Spec, check_params, default_params, padded_bytes, parse_spec

log = logging.getLogger(__name__)


class FaissIndex:
    """A faiss index over a catalogue; `path` is its directory (None: in memory until saved)."""

    def __init__(self, catalogue: Catalogue, path: Path | None = None) -> None:
        self.catalogue, self.path = catalogue, path
        self.dim: int = int(catalogue.get("dim"))
        self.metric: str = catalogue.get("metric")
        self._spec: Spec = parse_spec(catalogue.get("spec"))
        self.binary = self._spec.binary
        self.code_bytes = self.dim // 8 if self.binary else 0
        stored = check_params(self._spec, catalogue.get("params", {}))
        self._params = {**default_params(self._spec), **stored}
        self._structure: fp.Structure = self._fresh()
        self._live: np.ndarray | None = np.zeros(0, bool) if self._tombstones else None
        self._seq = 0  # the catalogue change this structure reflects
        self.snapshot_seq: int | None = None  # the change the file on disk reflects
        self._lookup: tuple[np.ndarray, np.ndarray] | None = None  # sorted ids, positions
        self._live_sel: Any = None
        self._dead: int | None = None  # cached tombstone count
        self._view: np.ndarray | None = None  # cached IDMap position -> id view
        self._own_params: list[Any] = []  # [the faiss SearchParameters of self._params]
        self._inner: tuple[Any, Any] = (None, None)  # (structure, its IDMap's inner index)
        self._names: dict[int, str] | None = None  # cached class_names

    @classmethod
    def create(cls, dim: int, metric: str, spec: str, path: Path | None = None) -> FaissIndex:
        """A new empty index; with `path` its catalogue is created there at once."""
        parsed = parse_spec(spec)
        checks.check_spec(parsed, dim, metric)
        dim = int(dim)  # numpy integers too
        settings = {"format_version": 2, "kind": "faiss", "spec": parsed.text, "metric": metric}
        settings |= {"dim": dim, "params": {}, "class_names": {}}
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        catalogue = Catalogue.create(None if path is None else path / "catalogue.sqlite", settings)
        return cls(catalogue, path)

    # -- properties ----------------------------------------------------------------------
    @property
    def spec(self) -> str:
        return self._spec.text

    @property
    def _tombstones(self) -> bool:
        return not self._spec.removes

    @property
    def params(self) -> dict[str, int | float]:
        return dict(self._params)

    @property
    def is_trained(self) -> bool:
        return bool(self._structure.is_trained)

    @property
    def class_names(self) -> dict[int, str]:
        """Label -> name; read once (every search's hits ask: a service's searches queued on
        the catalogue's connection for it)."""
        if self._names is None:
            self._names = {int(k): v for k, v in self.catalogue.get("class_names", {}).items()}
        return dict(self._names)

    @class_names.setter
    def class_names(self, names: dict[int, str]) -> None:
        self.catalogue.set(class_names={str(k): str(v) for k, v in names.items()})
        self._names = None

    @property
    def dead(self) -> int:
        """Tombstoned vectors still in the structure."""
        if self._dead is None:  # cached: searches ask on every call
            self._dead = 0 if self._live is None else int(len(self._live) - self._live.sum())
        return self._dead

    def __len__(self) -> int:
        return int(self._structure.ntotal) - self.dead

    def __repr__(self) -> str:
        where = self.path or "memory"
        return f"FaissIndex({self.spec}, {self.metric}, dim={self.dim}, n={len(self)}, {where})"

    # -- structure -----------------------------------------------------------------------
    def _fresh(self) -> fp.Structure:
        """An empty structure: the trained template when the spec needs training."""
        template = self.catalogue.template()
        if template is not None:
            return fp.deserialize(template, self.binary)
        return fp.new_structure(self._spec, self.dim, self.metric)

    def _changed(self) -> None:
        self._lookup, self._live_sel, self._dead, self._view = None, None, None, None

    def _id_view(self) -> np.ndarray:
        """The IDMap's position -> id view, cached until the structure changes."""
        if self._view is None:
            self._view = fp.id_view(self._structure)
        return self._view

    def _inner_index(self) -> Any:
        """The IDMap's inner index; its SWIG proxy kept (each `.index` read builds one, ~1 us)."""
        if self._inner[0] is not self._structure:
            self._inner = (self._structure, self._structure.index)
        return self._inner[1]

    def _insert(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Add prepared rows to the structure (already in the catalogue)."""
        self._structure.add_with_ids(x, ids)
        if self._live is not None:
            self._live = np.concatenate([self._live, np.ones(len(ids), bool)])
        self._changed()

    def _delete(self, ids: np.ndarray) -> None:
        """Remove ids from the structure (already out of the catalogue)."""
        if self._live is None:
            self._structure.remove_ids(fp.batch_selector(ids))
        else:
            self._live[self._positions(ids)] = False
        self._changed()

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Live positions (in the IDMap) of those of `ids` that are stored."""
        if self._lookup is None:
            view = self._id_view()
            pos = np.arange(len(view)) if self._live is None else np.flatnonzero(self._live)
            order = np.argsort(view[pos], kind="stable")
            self._lookup = view[pos][order], pos[order]
        sorted_ids, pos = self._lookup
        at = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
        found = sorted_ids[at] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
        return pos[at[found]]

    def _stored(self, blobs: list[bytes]) -> np.ndarray:
        """Catalogue blobs -> prepared rows (unit vectors for cosine, padded codes)."""
        flat = b"".join(blobs)
        if self.binary:
            return checks.pad(np.frombuffer(flat, np.uint8).reshape(-1, self.code_bytes))
        return checks.floats(np.frombuffer(flat, np.float32).reshape(-1, self.dim), self.metric)

    def rebuild(self, reason: str = "") -> None:
        """A new structure from the catalogue (tombstones dropped); warns with `reason`."""
        if reason:
            log.warning(
                "%s: %s; rebuilding it from the catalogue (%d items)",
                self.path or "index",
                reason,
                len(self.catalogue),
            )
        self._structure = self._fresh()
        self._live = np.zeros(0, bool) if self._tombstones else None
        self._changed()
        for ids, blobs in self.catalogue.scan():
            self._insert(self._stored(blobs), ids)
        self._seq = self.catalogue.last_seq

    def compact(self) -> None:
        """Drop tombstones by rebuilding the structure from the catalogue."""
        if self.dead:
            self.rebuild()

    def attach(self, structure: fp.Structure, seq: int) -> None:
        """Take a snapshot structure reflecting catalogue change `seq`, then replay the
        changes after it; StaleSnapshotError when it does not match the catalogue."""
        live = snapshot_live(self._spec, structure, self.catalogue, seq)
        self._structure, self._live = structure, live if self._tombstones else None
        self._changed()
        gone = self.catalogue.removed_since(seq)
        if len(gone):
            self._delete(gone)
        for ids, blobs in self.catalogue.scan(after=seq):
            self._insert(self._stored(blobs), ids)
        self._seq, self.snapshot_seq = self.catalogue.last_seq, seq
        if len(self) != len(self.catalogue):
            raise StaleSnapshotError("the replayed index does not match the catalogue's item count")

    def serialize(self) -> tuple[bytes, int]:
        """(the structure's bytes, the catalogue change it reflects)."""
        return fp.serialize(self._structure, self.binary), self._seq

    # -- the protocol --------------------------------------------------------------------
    def train(self, vectors: np.ndarray) -> None:
        """Train the spec's quantizers (IVF lists, PQ codebooks, OPQ); no-op when none."""
        if not self._spec.needs_training:
            return
        x, _ = checks.vectors(self, vectors)
        if len(self):
            raise DataError(
                f"the index already holds {len(self)} items: build a new one to retrain"
            )
        need = self._spec.min_training()
        if len(x) < need:
            what = f"{self._spec.nlist} lists" + (
                " and 256 per PQ codebook" if self._spec.pq_m else ""
            )
            raise DataError(
                f"training {self.spec} needs at least {need} vectors ({what}), got {len(x)}"
            )
        structure = fp.new_structure(self._spec, self.dim, self.metric)
        structure.train(x)
        self.catalogue.set_template(fp.serialize(structure, self.binary))
        self._structure = structure
        self._changed()

    def add(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        labels: np.ndarray | None = None,
        metadata: list[dict[str, Any] | None] | None = None,
        sources: list[str | None] | None = None,
    ) -> None:
        """Add items; committed to the catalogue before this returns."""
        given = checks.items(self, vectors, ids, labels, metadata, sources)
        if len(given.ids) == 0:
            return
        if not self.is_trained:
            raise DataError(
                f"index {self.spec} is not trained: call train(vectors) first "
                f"(at least {self._spec.min_training()} vectors)"
            )
        blobs = [row.tobytes() for row in given.originals]
        self._seq = self.catalogue.add(
            given.ids, given.labels, given.sources, given.metadata, blobs
        )
        try:
            self._insert(given.rows, given.ids)
        except Exception:
            self.rebuild("the faiss add failed")  # the catalogue has the items: resync
            raise

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Remove items by id; an unknown id refuses the whole call."""
        item_ids = np.unique(checks.ids(ids, None))
        if len(item_ids) == 0:
            return
        self._seq = self.catalogue.remove(item_ids)
        self._delete(item_ids)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (q, k), nearest first; see `deepembed.index.base`."""
        x, _ = checks.vectors(self, queries, "queries")
        k = checks.k(k)
        merged = {**self._params, **check_params(self._spec, params)} if params else self._params
        subset = None if not filters else self.catalogue.filter_ids(filters)
        if self.binary or len(x) < fp.BLAS_MIN_QUERIES:  # below it faiss's default agrees
            raw, ids = self._search(x, k, merged, subset)
        else:
            with fp.blas_rule(self.dim):
                raw, ids = self._search(x, k, merged, subset)
        return fp.to_distances(raw, ids, self.metric), ids

    def _search(
        self, x: np.ndarray, k: int, params: dict[str, Any], subset: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(raw faiss distances, ids) of prepared queries, within `subset` ids when given."""
        structure, spec = self._structure, self._spec
        if len(self) == 0 or (subset is not None and len(subset) == 0):
            return np.zeros((len(x), k), np.float32), np.full((len(x), k), -1, np.int64)
        if subset is not None and spec.family != "flat":
            if not spec.selects or len(subset) <= fp.EXACT_SUBSET:  # BIVF / BHash: no selector
                return self._exact(x, k, subset)
            params = fp.widened(spec, params, len(subset) / len(self))
        if spec.native_ids:
            sel = None if subset is None else fp.batch_selector(subset)
            raw, ids = fp.faiss_search(structure, x, k, self._search_params(params, sel))
        elif subset is None and self.dead and spec.family == "hash":
            assert self._live is not None
            raw, ids = fp.overfetch(self._inner_index(), self._live, self._id_view(), x, k)
        else:
            # the IDMap's inner index, positions mapped to ids here: IndexIDMap.search adds an
            # OpenMP region of its own, which cost ~6 ms a query on a busy 2-core machine
            sel = None
            if subset is not None or self.dead:
                sel = self._live_selector() if subset is None else self._subset_selector(subset)
            raw, pos = fp.faiss_search(self._inner_index(), x, k, self._search_params(params, sel))
            ids = fp.mapped(self._id_view(), pos)
        if subset is not None:  # an approximate search may come back short: exact for those
            short = (ids >= 0).sum(1) < min(k, len(subset))
            if short.any():
                raw[short], ids[short] = self._exact(x[short], k, subset)
        return raw, ids

    def _search_params(self, params: dict[str, Any], sel: Any) -> Any:
        """faiss SearchParameters; those of the index's own settings built once (~5 us a
        query saved: searches one query at a time run at 10-50 us in faiss)."""
        if sel is not None or params is not self._params:
            return fp.search_params(self._spec, params, sel)
        if not self._own_params:
            self._own_params.append(fp.search_params(self._spec, params))
        return self._own_params[0]

    def _subset_selector(self, subset: np.ndarray) -> Any:
        positions = self._positions(subset)
        if self._spec.family == "flat" and not self.binary:
            return fp.array_selector(positions)
        return fp.batch_selector(positions)

    def _live_selector(self) -> Any:
        if self._live_sel is None:
            self._live_sel = fp.bitmap_selector(self._live)
        return self._live_sel

    def _exact(self, x: np.ndarray, k: int, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the catalogue's vectors of `subset`."""
        base = self._stored(self.catalogue.vectors(subset))
        return fp.exact_search(base, subset, x, k, self.metric)

    def get(self, ids: np.ndarray | list[int]) -> list[Item]:
        """The items of `ids`, in order, with their vectors; an unknown id is an error."""
        wanted = np.asarray(ids, np.int64).ravel()
        rows = self.catalogue.rows(wanted, vectors=True)
        items = []
        for i in wanted.tolist():
            if i not in rows:
                raise DataError(f"no item with id {i} in the index")
            label, source, meta, blob = rows[i]
            dtype = np.uint8 if self.binary else np.float32
            items.append(Item(i, label, source, meta, np.frombuffer(blob, dtype).copy()))
        return items

    def set_params(self, **params: Any) -> None:
        """Set search parameters for every later search; persisted in the catalogue."""
        checked = check_params(self._spec, params)
        stored = {**self.catalogue.get("params", {}), **checked}
        self.catalogue.set(params=stored)
        self._params.update(checked)
        self._own_params.clear()

    def next_id(self) -> int:
        return self.catalogue.next_id()

    def sources(self) -> set[str]:
        return self.catalogue.sources()

    def info(self) -> dict[str, Any]:
        """What `index info` shows: type, counts, memory, parameters, catalogue state."""
        out: dict[str, Any] = {
            "backend": "faiss",
            "spec": self.spec,
            "metric": self.metric,
            "dim": self.dim,
            "items": len(self),
            "stored_vectors": int(self._structure.ntotal),
            "tombstones": self.dead,
            "trained": self.is_trained,
            "params": self.params,
            "memory_bytes": fp.memory_bytes(self._structure, self.binary),
            "path": str(self.path) if self.path else None,
            "snapshot_seq": self.snapshot_seq,
            "catalogue": self.catalogue.stats(),
        }
        if self.binary:
            out |= {"code_bytes": (b := self.code_bytes), "stored_code_bytes": padded_bytes(b)}
        return out

    def save(self, path: str | Path | None = None) -> Path:
        """Write the index: a snapshot in its own directory, or a full copy elsewhere."""
        from deepembed.index.storage import save

        return save(self, path)

    def bind(self, catalogue: Catalogue, path: Path, snapshot_seq: int) -> None:
        """Continue on `catalogue` at `path` (an in-memory index after its first save)."""
        self.catalogue.close()
        self.catalogue, self.path, self.snapshot_seq = catalogue, path, snapshot_seq

    def close(self) -> None:
        self.catalogue.close()

    def __enter__(self) -> FaissIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
