"""Filters on labels and metadata: `{"label": [3, 7], "color": "red"}`.

Keys are AND-ed; a list of values is an OR over them. "label" matches the item's label; any
other key matches a metadata key: a scalar value (str, int, float, bool, None) equals the
filter value, a list value matches when any of its elements does (tags). Values compare as
JSON, except that integral floats count as ints (3.0 matches 3). Nested objects are stored
but not filterable.
"""

from __future__ import annotations

import json
import numbers
from typing import Any

import numpy as np

from deepembed.errors import DataError

Filters = dict[str, Any]
RESERVED_KEYS = ("label",)


def encode_value(value: Any) -> str | None:
    """The catalogue's text for a scalar metadata value; None for what cannot be filtered."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is None or isinstance(value, str | bool | int | float):
        return json.dumps(value)
    return None


def metadata_fields(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, encoded value) pairs a filter can match: scalars and the scalars of lists."""
    pairs = []
    for key, value in metadata.items():
        for element in value if isinstance(value, list) else [value]:
            encoded = encode_value(element)
            if encoded is not None:
                pairs.append((key, encoded))
    return pairs


def normalise(filters: Filters, known: list[str]) -> list[tuple[str, list[Any]]]:
    """(key, values) pairs: labels as ints, metadata values encoded; unknown keys refused."""
    if not isinstance(filters, dict):
        raise DataError(f"filters must be a dict of key -> value(s), got {type(filters).__name__}")
    out = []
    for key, value in filters.items():
        if key not in known:
            raise DataError(f"unknown filter key {key!r}; known: {', '.join(sorted(known))}")
        values = list(value) if isinstance(value, list | tuple | set | np.ndarray) else [value]
        if key == "label":
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
            if bad:
                raise DataError(f"filter on label takes integer labels, got {bad[0]!r}")
            out.append((key, [int(v) for v in values]))
            continue
        encoded = [encode_value(v) for v in values]
        if None in encoded:
            bad = values[encoded.index(None)]
            raise DataError(
                f"filter on {key!r}: values must be str, number, bool or null, not {bad!r}"
            )
        out.append((key, encoded))
    return out


def parse_filter(text: str) -> tuple[str, Any]:
    """ "key=value" from the command line: the value read as JSON when it parses, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise DataError(f"--filter takes key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def merge_filters(pairs: list[tuple[str, Any]]) -> Filters:
    """Repeated keys become a list of values (any of them matches)."""
    merged: dict[str, list[Any]] = {}
    for key, value in pairs:
        merged.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return {k: v[0] if len(v) == 1 else v for k, v in merged.items()}
