"""Pieces of the Milvus backend: index specs, search parameters, filter expressions, distance
conversion, connecting and the exact fallback. No state; `deepembed.index.milvus` holds the index.

A Milvus spec is an index type with its build parameters, `TYPE[:name=value,...]`, e.g.
"HNSW:M=32,efConstruction=200" or "IVF_FLAT:nlist=1024"; missing build parameters take
defaults and the canonical text names them all. faiss strings with a Milvus counterpart are
translated (Flat, IVFn,Flat, HNSWm, BFlat, BIVFn), so `build(..., uri=milvus)` takes either.

Filters: each item stores the (key, JSON value) pairs a filter can match (the catalogue's
`metadata_fields`) as tokens `key=value` in a JSON field, {"t": [...]}; a filter on a key is
`json_contains_any(terms["t"], [tokens])`. That keeps the faiss backend's semantics exactly
(bool is not 1, integral floats are ints, list values match any element, null is a value),
which comparing metadata["key"] directly does not on every Milvus (milvus-lite 3.x reads
`metadata["b"] == 1` as true for True and has no `in` on JSON paths).
"""

from __future__ import annotations

import json
import numbers
import re
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from deepembed.errors import DataError
from deepembed.index import checks
from deepembed.index import faiss_parts as fp
from deepembed.index.filters import Filters, metadata_fields, normalise
from deepembed.index.specs import METRICS, parse_spec

MILVUS_METRICS = {
    "cosine": "COSINE",
    "inner_product": "IP",
    "euclidean": "L2",
    "hamming": "HAMMING",
}
# index type -> (build parameters with defaults, search parameters with defaults)
FLOAT_TYPES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 128}, {"nprobe": 16}),
    "IVF_SQ8": ({"nlist": 128}, {"nprobe": 16}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 64}),
}
BINARY_TYPES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "BIN_FLAT": ({}, {}),
    "BIN_IVF_FLAT": ({"nlist": 128}, {"nprobe": 16}),
}
PARAM_ALIASES = {"efSearch": "ef"}  # the faiss backend's name for HNSW's ef
MAX_TOPK = 16_384  # Milvus's limit on k (and on queries per request)
SOURCE_BYTES = 65_535  # VARCHAR's largest max_length
CONNECT_TIMEOUT_S = 5.0
_FAISS_FORMS = {  # faiss factory string family -> Milvus index type, build parameter
    ("flat", False): ("FLAT", None),
    ("ivf_flat", False): ("IVF_FLAT", "nlist"),
    ("hnsw", False): ("HNSW", "M"),
    ("flat", True): ("BIN_FLAT", None),
    ("ivf_flat", True): ("BIN_IVF_FLAT", "nlist"),
}


@dataclass(frozen=True)
class MilvusSpec:
    """A validated Milvus index type with its build parameters."""

    index_type: str
    build: dict[str, int] = field(default_factory=dict)

    @property
    def binary(self) -> bool:
        return self.index_type in BINARY_TYPES

    @property
    def text(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.build.items())
        return f"{self.index_type}:{args}" if args else self.index_type

    @property
    def search_defaults(self) -> dict[str, int]:
        return dict({**FLOAT_TYPES, **BINARY_TYPES}[self.index_type][1])


def _known() -> str:
    types = [*FLOAT_TYPES, *BINARY_TYPES]
    return f"{', '.join(types)} (e.g. HNSW:M=32,efConstruction=200; IVF_FLAT:nlist=1024)"


def _from_faiss(text: str) -> MilvusSpec | None:
    """The Milvus counterpart of a faiss factory string, or None."""
    try:
        parsed = parse_spec(text)
    except DataError:
        return None
    found = _FAISS_FORMS.get((parsed.family, parsed.binary))
    if found is None:
        return None
    index_type, param = found
    build = dict({**FLOAT_TYPES, **BINARY_TYPES}[index_type][0])
    if param is not None:
        build[param] = parsed.nlist if param == "nlist" else parsed.hnsw_m
    return MilvusSpec(index_type, build)


def parse_milvus_spec(text: str) -> MilvusSpec:
    """`TYPE[:name=value,...]` (or a translatable faiss string) -> MilvusSpec."""
    text = str(text).strip()
    head, _, args = text.partition(":")
    index_type = head.strip().upper()
    types = {**FLOAT_TYPES, **BINARY_TYPES}
    if index_type not in types:
        translated = _from_faiss(text)
        if translated is None:
            raise DataError(f"unknown Milvus index spec {text!r}; accepted: {_known()}")
        return translated
    defaults = types[index_type][0]
    build = dict(defaults)
    for part in filter(None, (p.strip() for p in args.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in defaults:
            takes = ", ".join(defaults) or "no build parameters"
            raise DataError(f"Milvus index spec {text!r}: {part!r} does not apply (takes: {takes})")
        if not re.fullmatch(r"\s*\d+\s*", value) or int(value) < 1:
            raise DataError(f"Milvus index spec {text!r}: {name} must be a positive integer")
        build[name] = int(value)
    return MilvusSpec(index_type, build)


def check_settings(spec: MilvusSpec, dim: Any, metric: str) -> int:
    """Refuse a metric, dimension and spec that do not fit together; the dimension as int."""
    if metric not in METRICS:
        raise DataError(f"unknown index metric {metric!r}; known: {', '.join(METRICS)}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise DataError(f"index dimension must be a positive integer, got {dim!r}")
    if spec.binary != (metric == "hamming"):
        need = "a binary spec (BIN_FLAT, BIN_IVF_FLAT)" if metric == "hamming" else "'hamming'"
        raise DataError(f"Milvus index {spec.text} with metric {metric!r}: needs {need}")
    if spec.binary and dim % 8:
        raise DataError(f"binary codes need a bit count divisible by 8, got {dim}")
    return int(dim)


def check_params(spec: MilvusSpec, params: dict[str, Any]) -> dict[str, int]:
    """Validated search parameters (nprobe, ef; efSearch read as ef) for `spec`."""
    takes = spec.search_defaults
    out: dict[str, int] = {}
    for given, value in params.items():
        name = PARAM_ALIASES.get(given, given)
        if name not in takes:
            names = ", ".join(takes) or "no search parameters"
            raise DataError(
                f"search parameter {given!r} does not apply to {spec.text} (takes: {names})"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DataError(f"search parameter {given} must be a number, got {value!r}")
        if not float(value).is_integer() or value < 1:
            raise DataError(f"search parameter {given} must be a positive integer, got {value!r}")
        out[name] = int(value)
    return out


def search_params(spec: MilvusSpec, metric: str, params: dict[str, int], k: int) -> dict:
    """What MilvusClient.search takes: the metric and the index's parameters (ef >= k, as
    HNSW requires; nprobe at most nlist)."""
    inner: dict[str, int] = dict(params)
    if "ef" in inner:
        inner["ef"] = max(inner["ef"], k)
    if "nprobe" in inner:
        inner["nprobe"] = min(inner["nprobe"], spec.build["nlist"])
    return {"metric_type": MILVUS_METRICS[metric], "params": inner}


def to_distances(scores: np.ndarray, metric: str) -> np.ndarray:
    """Milvus scores -> the protocol's distances: COSINE and IP are similarities (1 - cos,
    minus the dot), L2 is squared (its root), HAMMING differing bits."""
    if metric == "cosine":
        return (1.0 - scores).astype(np.float32)
    if metric == "inner_product":
        return (-scores).astype(np.float32)
    if metric == "euclidean":
        return np.sqrt(np.maximum(scores, 0)).astype(np.float32)
    return scores.astype(np.float32)


def terms(metadata: dict[str, Any]) -> dict[str, list[str]]:
    """The filter tokens of one item's metadata, as stored in its `terms` JSON field."""
    return {"t": [f"{key}={value}" for key, value in metadata_fields(metadata)]}


def expression(filters: Filters | None, known: list[str]) -> str | None:
    """A Milvus boolean expression for `filters` (None: no filter; "" matches nothing).
    Unknown keys and bad values are refused as by the faiss backend."""
    if not filters:
        return None
    clauses = []
    for key, values in normalise(filters, known):
        if not values:
            return ""
        if key == "label":
            clauses.append(f"label in [{', '.join(str(v) for v in values)}]")
        else:
            tokens = ", ".join(json.dumps(f"{key}={v}", ensure_ascii=False) for v in values)
            clauses.append(f'json_contains_any(terms["t"], [{tokens}])')
    return " and ".join(f"({c})" for c in clauses)


def ids_expression(ids: np.ndarray | list[int]) -> str:
    return f"id in [{', '.join(str(int(i)) for i in ids)}]"


def split_uri(uri: str) -> tuple[str, str]:
    """ "x.db#name" or "http://host:port#name" -> (client URI, collection); default name
    "deepembed"."""
    base, _, name = str(uri).partition("#")
    name = name or "deepembed"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", name):
        raise DataError(
            f"Milvus collection name {name!r} (after '#' in {uri}): letters, digits and _ only"
        )
    return base, name


def is_lite(base: str) -> bool:
    """A milvus-lite data file (a .db path) rather than a server URI."""
    return not base.startswith(("http://", "https://", "tcp://"))


def probe(base: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A one-line DataError when nothing listens at a server URI (pymilvus would retry)."""
    parts = urlsplit(base.replace("tcp://", "http://", 1))
    host, port = parts.hostname or "localhost", parts.port or 19530
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise DataError(f"cannot reach Milvus at {base}: {exc.strerror or exc}") from None


def lite_major() -> int:
    """milvus-lite's major version (3.x has no binary vectors)."""
    from importlib.metadata import version

    return int(version("milvus-lite").split(".")[0])


def one_line(exc: BaseException) -> str:
    """A Milvus error's message on one line."""
    text = str(getattr(exc, "message", "") or exc)
    return " ".join(text.split())[:300]


def exact(
    base: np.ndarray, base_ids: np.ndarray, x: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over `base` (a filtered subset), in the protocol's conventions."""
    prepared = checks.pad(base) if metric == "hamming" else checks.prepare_floats(base, metric)
    queries = checks.pad(x) if metric == "hamming" else checks.prepare_floats(x, metric)
    raw, ids = fp.exact_search(prepared, base_ids, queries, k, metric)
    return fp.to_distances(raw, ids, metric), ids
