"""MilvusIndex: the Index protocol on Milvus through pymilvus's MilvusClient.

`uri` is a milvus-lite data file ("gallery.db", embedded, float vectors only in milvus-lite
3.x) or a server ("http://host:19530"), optionally with "#collection" (default "deepembed").
Items live in that collection: id (INT64 primary key), vector (FLOAT_VECTOR, or
BINARY_VECTOR for hamming codes), label (INT64), source (VARCHAR, "" for none), metadata
(JSON) and terms (JSON: the filter tokens, see `milvus_parts`). The index's settings (dim,
metric, spec, search parameters, class names, metadata keys, the largest id ever added) are
JSON in the collection's property "deepembed.settings", rewritten on every change, so
`open(uri)` needs nothing else; `save()` only flushes (a server then indexes sealed segments).
(A property rather than a second collection: loading one costs ~3 s on a server.)

Every read is at strong consistency, so an add or remove is visible to the next search.
Adds and removes are validated (ids queried first) before anything is written; Milvus has
no transactions, so an insert failing half-way is undone by deleting what it wrote.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deepembed.errors import DataError
from deepembed.index import checks
from deepembed.index import milvus_parts as mp
from deepembed.index.base import Item

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STRONG = "Strong"
SETTINGS = "deepembed.settings"  # the collection property holding the settings
_ID_CHUNK = 8_192  # ids per `id in [...]` expression
_INSERT_BYTES = 16 << 20  # rows per insert request: about this many bytes of vectors
_QUERY_CHUNK = 1_024  # queries per search request


class MilvusIndex:
    """An index in a Milvus collection; create with `create`, reopen with `open`."""

    def __init__(self, client: Any, uri: str, name: str, settings: dict[str, Any]) -> None:
        self.client, self.uri, self.name = client, uri, name
        self._settings = settings
        self.dim: int = int(settings["dim"])
        self.metric: str = settings["metric"]
        self._spec = mp.parse_milvus_spec(settings["spec"])
        self.binary = self._spec.binary
        self.code_bytes = self.dim // 8 if self.binary else 0
        self._params = {**self._spec.search_defaults, **settings.get("params", {})}

    # -- opening -------------------------------------------------------------------------
    @staticmethod
    def _connect(uri: str, must_exist: bool) -> tuple[Any, str, str]:
        """(client, client URI, collection name); a one-line DataError when unreachable."""
        from pymilvus import MilvusClient

        base, name = mp.split_uri(uri)
        if mp.is_lite(base):
            if must_exist and not Path(base).exists():
                raise DataError(f"no Milvus index at {uri}: {base} does not exist")
            if not Path(base).parent.is_dir():
                raise DataError(f"cannot create {base}: {Path(base).parent} is not a directory")
        else:
            mp.probe(base)
        try:
            client = MilvusClient(base)
        except Exception as exc:
            raise DataError(f"cannot open Milvus at {base}: {mp.one_line(exc)}") from None
        return client, base, name

    @classmethod
    def create(cls, dim: int, metric: str, spec: str, uri: str | Path) -> MilvusIndex:
        """A new empty index in a new collection at `uri`."""
        parsed = mp.parse_milvus_spec(spec)
        dim = mp.check_settings(parsed, dim, metric)
        base, _ = mp.split_uri(str(uri))
        if parsed.binary and mp.is_lite(base) and mp.lite_major() >= 3:
            raise DataError(
                f"milvus-lite {mp.lite_major()}.x (a .db file) has no binary vectors: index "
                "hamming codes on a Milvus server (uri http://host:19530) or in a faiss index"
            )
        client, base, name = cls._connect(str(uri), must_exist=False)
        if client.has_collection(name):
            client.close()
            raise DataError(f"{uri} already holds collection {name!r}: open() it, or use another")
        settings = {"format_version": FORMAT_VERSION, "kind": "milvus", "spec": parsed.text}
        settings |= {"metric": metric, "dim": dim, "params": {}, "class_names": {}}
        settings |= {"keys": [], "max_id": -1}
        try:
            cls._create_collection(client, name, parsed, dim, metric)
            index = cls(client, str(uri), name, settings)
            index._write_settings()
        except Exception as exc:
            if client.has_collection(name):
                client.drop_collection(name)
            client.close()
            raise DataError(f"cannot create a Milvus index at {uri}: {mp.one_line(exc)}") from None
        return index

    @staticmethod
    def _create_collection(
        client: Any, name: str, spec: mp.MilvusSpec, dim: int, metric: str
    ) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        vector_type = DataType.BINARY_VECTOR if spec.binary else DataType.FLOAT_VECTOR
        schema.add_field("vector", vector_type, dim=dim)
        schema.add_field("label", DataType.INT64)
        schema.add_field("source", DataType.VARCHAR, max_length=mp.SOURCE_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("terms", DataType.JSON)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name="vector",
            index_type=spec.index_type,
            metric_type=mp.MILVUS_METRICS[metric],
            # flat for a server, and as "params" JSON: milvus-lite 3.x reads only that one
            params={**spec.build, "params": dict(spec.build)} if spec.build else {},
        )
        client.create_collection(name, schema=schema, consistency_level=STRONG)
        # sync=False skips pymilvus's fixed 0.5 s wait for the index of an empty collection
        client.create_index(name, index_params, sync=False)
        client.load_collection(name)

    @classmethod
    def open(cls, uri: str | Path) -> MilvusIndex:
        """The index created at `uri` (its collection loaded for search)."""
        client, _, name = cls._connect(str(uri), must_exist=True)
        if not client.has_collection(name):
            client.close()
            raise DataError(f"no deepembed index at {uri} (no collection {name!r})")
        try:
            text = client.describe_collection(name).get("properties", {}).get(SETTINGS)
            settings = None if text is None else json.loads(text)
            if settings is not None:
                client.load_collection(name)
        except Exception as exc:
            client.close()
            raise DataError(f"cannot open the Milvus index at {uri}: {mp.one_line(exc)}") from None
        if not isinstance(settings, dict) or settings.get("kind") != "milvus":
            client.close()
            raise DataError(f"{uri}: collection {name!r} is not a deepembed index (no settings)")
        return cls(client, str(uri), name, settings)

    def _write_settings(self, **changes: Any) -> None:
        self._settings.update(changes)
        self.client.alter_collection_properties(self.name, {SETTINGS: json.dumps(self._settings)})

    # -- properties ----------------------------------------------------------------------
    @property
    def spec(self) -> str:
        return self._spec.text

    @property
    def params(self) -> dict[str, int | float]:
        return dict(self._params)

    @property
    def is_trained(self) -> bool:
        return True  # Milvus builds its index structures itself

    @property
    def class_names(self) -> dict[int, str]:
        return {int(k): v for k, v in self._settings.get("class_names", {}).items()}

    @class_names.setter
    def class_names(self, names: dict[int, str]) -> None:
        self._write_settings(class_names={str(k): str(v) for k, v in names.items()})

    def __len__(self) -> int:
        rows = self.client.query(
            self.name, filter="", output_fields=["count(*)"], consistency_level=STRONG
        )
        return int(rows[0]["count(*)"])

    def __repr__(self) -> str:
        return f"MilvusIndex({self.spec}, {self.metric}, dim={self.dim}, {self.uri})"

    # -- reading helpers -----------------------------------------------------------------
    def _present(self, ids: np.ndarray) -> np.ndarray:
        """Those of `ids` that are stored."""
        found: list[int] = []
        for start in range(0, len(ids), _ID_CHUNK):
            part = ids[start : start + _ID_CHUNK]
            rows = self.client.query(
                self.name, filter=mp.ids_expression(part), output_fields=["id"],
                consistency_level=STRONG,
            )  # fmt: skip
            found += [int(r["id"]) for r in rows]
        return np.array(sorted(found), np.int64)

    def _vector(self, value: Any) -> np.ndarray:
        """A stored vector as the protocol hands it back: float32, or the packed code."""
        if self.binary:
            raw = b"".join(value) if isinstance(value, list) else bytes(value)
            return np.frombuffer(raw, np.uint8).copy()
        return np.asarray(value, np.float32)

    def _scan(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching `expr` (paged by the query iterator)."""
        iterator = self.client.query_iterator(
            self.name, batch_size=4_096, filter=expr, output_fields=fields,
            consistency_level=STRONG,
        )  # fmt: skip
        rows: list[dict[str, Any]] = []
        while batch := iterator.next():
            rows += batch
        iterator.close()
        return rows

    # -- the protocol --------------------------------------------------------------------
    def train(self, vectors: np.ndarray) -> None:
        """No-op: Milvus trains IVF lists itself when it builds a segment's index."""
        checks.vectors(self, vectors)  # type: ignore[arg-type]

    def add(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        labels: np.ndarray | None = None,
        metadata: list[dict[str, Any] | None] | None = None,
        sources: list[str | None] | None = None,
    ) -> None:
        """Add items; refused whole (nothing written) when an id is already present."""
        given = checks.items(self, vectors, ids, labels, metadata, sources)  # type: ignore[arg-type]
        n = len(given.ids)
        long = [s for s in given.sources if s is not None and len(s.encode()) > mp.SOURCE_BYTES]
        if long:
            raise DataError(f"a source longer than {mp.SOURCE_BYTES} bytes: {long[0][:60]}...")
        if n == 0:
            return
        taken = self._present(given.ids)
        if len(taken):
            raise DataError(
                f"duplicate ids: {len(taken)} already in the index, e.g. {taken[:3].tolist()}"
            )
        rows = [
            {
                "id": int(i),
                "vector": row.tobytes() if self.binary else row.tolist(),
                "label": int(label),
                "source": source or "",
                "metadata": meta,
                "terms": mp.terms(meta),
            }
            for i, row, label, source, meta in zip(
                given.ids,
                given.originals,
                given.labels,
                given.sources,
                given.metadata,
                strict=True,
            )
        ]
        chunk = max(1, _INSERT_BYTES // max(given.originals[0].nbytes, 1))
        done = 0
        try:
            for start in range(0, n, chunk):
                self.client.insert(self.name, rows[start : start + chunk])
                done = min(start + chunk, n)
        except Exception as exc:
            if done:
                self.client.delete(self.name, ids=given.ids[:done].tolist())
            raise DataError(f"Milvus refused the add (nothing kept): {mp.one_line(exc)}") from None
        keys = sorted({*self._settings["keys"], *(k for m in given.metadata for k in m)})
        max_id = max(int(self._settings["max_id"]), int(given.ids.max()))
        if keys != self._settings["keys"] or max_id != self._settings["max_id"]:
            self._write_settings(keys=keys, max_id=max_id)

    def remove(self, ids: np.ndarray | list[int]) -> None:
        """Remove items by id; an unknown id refuses the whole call."""
        item_ids = np.unique(checks.ids(ids, None))
        if len(item_ids) == 0:
            return
        present = self._present(item_ids)
        if len(present) != len(item_ids):
            unknown = np.setdiff1d(item_ids, present)
            raise DataError(f"no item with id {unknown[0]} in the index ({len(unknown)} unknown)")
        for start in range(0, len(item_ids), _ID_CHUNK):
            self.client.delete(self.name, ids=item_ids[start : start + _ID_CHUNK].tolist())

    def search(
        self,
        queries: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (q, k), nearest first; see `deepembed.index.base`."""
        _, x = checks.vectors(self, queries, "queries")  # type: ignore[arg-type]
        k = checks.k(k)
        if k > mp.MAX_TOPK:
            raise DataError(f"k must be at most {mp.MAX_TOPK} on Milvus, got {k}")
        merged = {**self._params, **mp.check_params(self._spec, params or {})}
        expr = mp.expression(filters, ["label", *self._settings["keys"]])
        dist = np.full((len(x), k), np.inf, np.float32)
        ids = np.full((len(x), k), -1, np.int64)
        if expr == "" or len(x) == 0:
            return dist, ids
        request = mp.search_params(self._spec, self.metric, merged, k)
        for start in range(0, len(x), _QUERY_CHUNK):
            part = x[start : start + _QUERY_CHUNK]
            data = [r.tobytes() for r in part] if self.binary else part.tolist()
            hits = self.client.search(
                self.name, data=data, limit=k, filter=expr or "", search_params=request,
                output_fields=["id"], consistency_level=STRONG,
            )  # fmt: skip
            for row, found in enumerate(hits, start):
                got = len(found.ids)
                ids[row, :got] = found.ids
                dist[row, :got] = mp.to_distances(np.asarray(found.distances), self.metric)
        self._fill_short(x, k, expr, dist, ids)
        return dist, ids

    def _fill_short(
        self, x: np.ndarray, k: int, expr: str | None, dist: np.ndarray, ids: np.ndarray
    ) -> None:
        """Rows an approximate search left short of min(k, matches): exact search instead."""
        got = (ids >= 0).sum(1)
        if (got >= k).all():
            return
        matches = self.client.query(
            self.name, filter=expr or "", output_fields=["count(*)"], consistency_level=STRONG
        )[0]["count(*)"]
        short = got < min(k, int(matches))
        if not short.any():
            return
        rows = self._scan(expr or "id >= 0", ["id", "vector"])
        base = np.stack([self._vector(r["vector"]) for r in rows])
        base_ids = np.array([r["id"] for r in rows], np.int64)
        d, i = mp.exact(base, base_ids, x[short], k, self.metric)
        dist[short], ids[short] = d, i

    def get(self, ids: np.ndarray | list[int]) -> list[Item]:
        """The items of `ids`, in order, with their vectors; an unknown id is an error."""
        wanted = np.asarray(ids, np.int64).ravel()
        found: dict[int, dict[str, Any]] = {}
        fields = ["id", "vector", "label", "source", "metadata"]
        for start in range(0, len(wanted), _ID_CHUNK):
            expr = mp.ids_expression(np.unique(wanted[start : start + _ID_CHUNK]))
            for r in self.client.query(
                self.name, filter=expr, output_fields=fields, consistency_level=STRONG
            ):
                found[int(r["id"])] = r
        items = []
        for i in wanted.tolist():
            if i not in found:
                raise DataError(f"no item with id {i} in the index")
            r = found[i]
            meta = dict(r["metadata"] or {})
            vector = self._vector(r["vector"])
            items.append(Item(i, int(r["label"]), r["source"] or None, meta, vector))
        return items

    def set_params(self, **params: Any) -> None:
        """Search parameters (nprobe, ef) for every later search; stored with the settings."""
        checked = mp.check_params(self._spec, params)
        self._write_settings(params={**self._settings.get("params", {}), **checked})
        self._params.update(checked)

    def next_id(self) -> int:
        """One more than any id ever added (removed ones are not reused)."""
        return int(self._settings["max_id"]) + 1

    def sources(self) -> set[str]:
        return {r["source"] for r in self._scan('source != ""', ["source"])}

    def info(self) -> dict[str, Any]:
        """Type, counts, parameters and where the collection lives."""
        return {
            "backend": "milvus-lite" if mp.is_lite(mp.split_uri(self.uri)[0]) else "milvus",
            "spec": self.spec,
            "metric": self.metric,
            "dim": self.dim,
            "items": len(self),
            "tombstones": 0,
            "trained": True,
            "params": self.params,
            "uri": self.uri,
            "collection": self.name,
            "metadata_keys": list(self._settings["keys"]),
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Flush: seal the collection's growing segments, so that Milvus builds its index on
        them (items and settings are already durable as each change returns); milvus-lite
        then reloads the collection to search with that index. Returns the URI as a Path;
        another `path` is refused (copy a collection with Milvus tools)."""
        if path is not None and str(path) != self.uri:
            raise DataError(
                f"a Milvus index lives at its URI ({self.uri}); save() cannot copy it to {path}"
            )
        self.client.flush(self.name)
        if mp.is_lite(mp.split_uri(self.uri)[0]):
            # milvus-lite 3.x searches a segment indexed at flush by brute force until the
            # collection is loaded again (measured: HNSW ~15x faster once reloaded)
            self.client.release_collection(self.name)
            self.client.load_collection(self.name)
        return Path(self.uri)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
