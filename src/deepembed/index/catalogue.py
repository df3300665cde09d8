"""The catalogue: every item of a faiss index in SQLite (WAL), the durable record.

Tables: settings (key -> JSON text, or bytes for the trained template), changes (one seq per
add or remove, AUTOINCREMENT: increasing, never reused), items (id, seq of its add, label,
source, metadata JSON, vector BLOB), fields (id, key, JSON value: what filters match),
field_keys, removed (seq, id, seq of its add). An index file is a snapshot of the items up to
some seq; `ids(up_to=seq)`, `removed_since(seq)` and `scan(after=seq)` replay what came later.
A write is committed (synchronous=FULL) before the call returns.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from deepembed.errors import DataError
from deepembed.index.filters import Filters, metadata_fields, normalise
from deepembed.io import reading

FILE = "catalogue.sqlite"
_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's variable limit

SCHEMA = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL,
                      count INTEGER NOT NULL, time REAL NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, label INTEGER NOT NULL,
                    source TEXT, metadata TEXT, vector BLOB NOT NULL);
CREATE INDEX items_seq ON items (seq);
CREATE INDEX items_label ON items (label);
CREATE TABLE fields (id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX fields_key_value ON fields (key, value);
CREATE INDEX fields_id ON fields (id);
CREATE TABLE field_keys (key TEXT PRIMARY KEY);
CREATE TABLE removed (seq INTEGER NOT NULL, id INTEGER NOT NULL, added_seq INTEGER NOT NULL);
CREATE INDEX removed_seq ON removed (seq);
"""


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite, or shorter than its header says (truncated)."""
    with path.open("rb") as f:
        head = f.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
        raise sqlite3.DatabaseError("file is not a database")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(head[28:32], "big")
    # the page count is valid when the change counter matches "version-valid-for"
    if head[24:28] == head[92:96] and path.stat().st_size < pages * page_size:
        raise sqlite3.DatabaseError(f"{path.stat().st_size} bytes, its header says {pages} pages")


class Catalogue:
    """Items of one index in SQLite; `path` None keeps it in memory (until copied to a file)."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self._conn, self.path = conn, path
        self._lock = threading.RLock()  # one connection, shared by the threads of a service

    # -- opening -------------------------------------------------------------------------
    @staticmethod
    def _connect(path: Path | None) -> sqlite3.Connection:
        target = ":memory:" if path is None else str(path)
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")  # durable before acknowledged
        return conn

    @classmethod
    def create(cls, path: Path | None, settings: dict[str, Any]) -> Catalogue:
        """A new, empty catalogue holding `settings` (spec, metric, dim, ...)."""
        if path is not None and path.exists():
            raise DataError(f"{path}: a catalogue already exists there")
        conn = cls._connect(path)
        conn.executescript(SCHEMA)  # rollback journal first: the main file gets its pages
        conn.executemany(
            "INSERT INTO settings VALUES (?, ?)", [(k, json.dumps(v)) for k, v in settings.items()]
        )
        if path is not None:
            conn.execute("PRAGMA journal_mode=WAL")
        return cls(conn, path)

    @classmethod
    def open(cls, path: Path) -> Catalogue:
        """An existing catalogue file; a missing, empty or damaged one is one line naming it."""
        with reading(path, "an index catalogue (SQLite)", DataError, (sqlite3.DatabaseError,)):
            _check_header(path)
            conn = cls._connect(path)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("SELECT count(*) FROM items").fetchone()
                conn.execute("SELECT max(seq) FROM changes").fetchone()
            except sqlite3.DatabaseError:
                conn.close()
                raise
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection (SQLite folds the WAL into the main file)."""
        with self._lock:
            self._conn.close()

    def copy_to(self, path: Path) -> Catalogue:
        """A copy of this catalogue written to `path` (a new file), opened in WAL mode."""
        dest = self._connect(path)
        with self._lock:
            self._conn.backup(dest)
        dest.execute("PRAGMA journal_mode=WAL")
        return Catalogue(dest, path)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _by_ids(self, sql: str, ids: np.ndarray) -> list[tuple[Any, ...]]:
        """Rows of `sql` (with one "{}" for the id placeholders) for ids, in chunks."""
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), _CHUNK):
            part = [int(i) for i in ids[start : start + _CHUNK]]
            rows += self._query(sql.format(",".join("?" * len(part))), part)
        return rows

    # -- settings ------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        """A JSON setting."""
        rows = self._query("SELECT value FROM settings WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set(self, **values: Any) -> None:
        """Store JSON settings, committed."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO settings VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def template(self) -> bytes | None:
        """The trained, empty faiss index (serialised), for specs that need training."""
        rows = self._query("SELECT value FROM settings WHERE key = 'template'")
        return bytes(rows[0][0]) if rows else None

    def set_template(self, data: bytes) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO settings VALUES ('template', ?)", (data,))

    # -- changes -------------------------------------------------------------------------
    def _change(self, conn: sqlite3.Connection, op: str, count: int) -> int:
        cur = conn.execute(
            "INSERT INTO changes (op, count, time) VALUES (?, ?, ?)", (op, count, time.time())
        )
        return int(cur.lastrowid or 0)

    def add(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        sources: Sequence[str | None],
        metadata: Sequence[dict[str, Any]],
        blobs: Sequence[bytes],
    ) -> int:
        """Insert items as one change, committed; ids already present are refused (nothing
        written). Returns the change's seq."""
        try:
            with self._transaction() as conn:
                seq = self._change(conn, "add", len(ids))
                conn.executemany(
                    "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        (int(i), seq, int(lab), src, json.dumps(meta) if meta else None, blob)
                        for i, lab, src, meta, blob in zip(
                            ids, labels, sources, metadata, blobs, strict=True
                        )
                    ),
                )
                fields = [
                    (int(i), key, value)
                    for i, meta in zip(ids, metadata, strict=True)
                    if meta
                    for key, value in metadata_fields(meta)
                ]
                conn.executemany("INSERT INTO fields VALUES (?, ?, ?)", fields)
                keys = {(key,) for _, key, _ in fields}
                conn.executemany("INSERT OR IGNORE INTO field_keys VALUES (?)", keys)
        except sqlite3.IntegrityError:
            taken = self.present(ids)
            raise DataError(
                f"duplicate ids: {len(taken)} already in the index, e.g. {taken[:3].tolist()}"
            ) from None
        return seq

    def remove(self, ids: np.ndarray) -> int:
        """Delete items as one change, committed; unknown ids are refused (nothing written)."""
        with self._transaction() as conn:
            rows = self._by_ids("SELECT id, seq FROM items WHERE id IN ({})", ids)
            if len(rows) != len(ids):
                unknown = sorted(set(ids.tolist()) - {r[0] for r in rows})
                raise DataError(
                    f"no item with id {unknown[0]} in the index ({len(unknown)} unknown)"
                )
            seq = self._change(conn, "remove", len(ids))
            conn.executemany("INSERT INTO removed VALUES (?, ?, ?)", ((seq, i, s) for i, s in rows))
            for start in range(0, len(ids), _CHUNK):
                part = [int(i) for i in ids[start : start + _CHUNK]]
                marks = ",".join("?" * len(part))
                conn.execute(f"DELETE FROM items WHERE id IN ({marks})", part)
                conn.execute(f"DELETE FROM fields WHERE id IN ({marks})", part)
        return seq

    # -- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM items")[0][0])

    @property
    def last_seq(self) -> int:
        """The seq of the latest change (0 before any)."""
        return int(self._query("SELECT coalesce(max(seq), 0) FROM changes")[0][0])

    def present(self, ids: np.ndarray) -> np.ndarray:
        """Those of `ids` that are items, sorted."""
        rows = self._by_ids("SELECT id FROM items WHERE id IN ({})", ids)
        return np.sort(np.array([r[0] for r in rows], np.int64))

    def ids(self, up_to: int | None = None) -> np.ndarray:
        """Ids of the items (added at or before seq `up_to`), sorted."""
        sql, args = "SELECT id FROM items", ()
        if up_to is not None:
            sql, args = sql + " WHERE seq <= ?", (up_to,)
        return np.array([r[0] for r in self._query(sql + " ORDER BY id", args)], np.int64)

    def removed_since(self, seq: int) -> np.ndarray:
        """Ids removed after `seq` that had been added at or before it (in a snapshot then)."""
        rows = self._query("SELECT id FROM removed WHERE seq > ? AND added_seq <= ?", (seq, seq))
        return np.unique(np.array([r[0] for r in rows], np.int64))

    def scan(self, after: int = 0, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, list[bytes]]]:
        """(ids, vector blobs) of the items added after seq `after`, in the order added."""
        last = (after, 2**63 - 1)  # (seq, id) > (after, max): every seq after `after`
        while True:
            rows = self._query(
                "SELECT seq, id, vector FROM items WHERE (seq, id) > (?, ?) "
                "ORDER BY seq, id LIMIT ?",
                (*last, chunk),
            )
            if not rows:
                return
            last = (rows[-1][0], rows[-1][1])
            yield np.array([r[1] for r in rows], np.int64), [r[2] for r in rows]

    def vectors(self, ids: np.ndarray) -> list[bytes]:
        """The vector blobs of `ids`, in their order; unknown ids are an error."""
        found = dict(self._by_ids("SELECT id, vector FROM items WHERE id IN ({})", ids))
        missing = [int(i) for i in ids if int(i) not in found]
        if missing:
            raise DataError(f"no item with id {missing[0]} in the index")
        return [found[int(i)] for i in ids]

    def rows(self, ids: np.ndarray, vectors: bool = False) -> dict[int, tuple[Any, ...]]:
        """id -> (label, source, metadata[, vector blob]) of those of `ids` that are items."""
        extra = ", vector" if vectors else ""
        sql = f"SELECT id, label, source, metadata{extra} FROM items WHERE id IN ({{}})"
        return {
            r[0]: (r[1], r[2], json.loads(r[3]) if r[3] else {}, *r[4:])
            for r in self._by_ids(sql, ids)
        }

    def keys(self) -> list[str]:
        """Filter keys: "label" and every metadata key ever added."""
        return ["label", *(r[0] for r in self._query("SELECT key FROM field_keys"))]

    def filter_ids(self, filters: Filters) -> np.ndarray:
        """Ids of the items matching every filter key (any of its values), sorted."""
        clauses, args = [], []
        for key, values in normalise(filters, self.keys()):
            marks = ",".join("?" * len(values)) or "NULL"
            if key == "label":
                clauses.append(f"label IN ({marks})")
            else:
                clauses.append(
                    f"id IN (SELECT id FROM fields WHERE key = ? AND value IN ({marks}))"
                )
                args.append(key)
            args += values
        where = " AND ".join(clauses) or "1"
        rows = self._query(f"SELECT id FROM items WHERE {where} ORDER BY id", args)
        return np.array([r[0] for r in rows], np.int64)

    def next_id(self) -> int:
        """One more than any id ever added (removed ones are not reused)."""
        rows = self._query(
            "SELECT max(coalesce((SELECT max(id) FROM items), -1), "
            "coalesce((SELECT max(id) FROM removed), -1))"
        )
        return int(rows[0][0]) + 1

    def sources(self) -> set[str]:
        """Every source recorded (to skip images already indexed)."""
        return {r[0] for r in self._query("SELECT source FROM items WHERE source IS NOT NULL")}

    def stats(self) -> dict[str, Any]:
        """Items, changes and files, for `index info`."""
        changes = self._query("SELECT op, count(*) FROM changes GROUP BY op")
        files = {}
        if self.path is not None:
            for suffix in ("", "-wal"):
                f = self.path.with_name(self.path.name + suffix)
                files[f.name] = f.stat().st_size if f.exists() else 0
        return {
            "items": len(self),
            "last_seq": self.last_seq,
            "changes": dict(changes),
            "journal_mode": self._query("PRAGMA journal_mode")[0][0],
            "files": files,
        }
