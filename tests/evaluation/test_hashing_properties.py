"""Property-based: hamming_precision@R and map_hash@K of evaluate() equal the brute-force
loops (tests/evaluation/hashing_oracle.py) on small random codes, single- and multi-label,
leave-one-out and query/gallery; one-hot label matrices equal single labels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deepembed.evaluation import EvaluationInputError, evaluate
from tests.evaluation.hashing_oracle import hamming, oracle_metrics, relevant

# no example database: nothing written into the work tree
SETTINGS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def hashing_case(draw):
    """Codes of 1..5 bits (heavy ties), 2..9 database items, labels single or multi."""
    bits = draw(st.integers(1, 5))
    n_db = draw(st.integers(2, 9))
    leave_one_out = draw(st.booleans())
    n_query = n_db if leave_one_out else draw(st.integers(1, 5))
    multi = draw(st.booleans())
    db = draw(arrays(np.bool_, (n_db, bits)))
    query = db if leave_one_out else draw(arrays(np.bool_, (n_query, bits)))

    def labels(n):
        if multi:
            return draw(arrays(np.bool_, (n, 3)))
        return draw(arrays(np.int64, n, elements=st.integers(0, 2)))

    db_labels = labels(n_db)
    q_labels = db_labels if leave_one_out else labels(n_query)
    radius = draw(st.integers(0, bits + 1))
    k = draw(st.integers(1, n_db + 1))
    return query, q_labels, db, db_labels, leave_one_out, radius, k


@SETTINGS
@given(hashing_case())
def test_radius_precision_and_map_hash_match_loops(case):
    query, q_labels, db, db_labels, leave_one_out, radius, k = case
    names = (f"hamming_precision@{radius}", f"map_hash@{k}")
    args = (query, q_labels) if leave_one_out else (query, q_labels, db, db_labels)
    dist, rel = hamming(query, db), relevant(q_labels, db_labels)
    want = oracle_metrics(dist, rel, leave_one_out, (radius,), (k,))
    if not want:  # no query has a relevant item
        with pytest.raises(EvaluationInputError, match="no query has"):
            evaluate(*args, metrics=names, distance="hamming")
        return
    got = evaluate(*args, metrics=names, distance="hamming", chunk_size=2)
    for name in names:
        assert got[name] == pytest.approx(want[name], abs=1e-9), name


@SETTINGS
@given(hashing_case())
def test_one_hot_matrix_equals_single_labels(case):
    query, q_labels, db, db_labels, leave_one_out, radius, k = case
    if np.ndim(q_labels) == 2:
        return  # the case drew multi-label input
    names = (f"hamming_precision@{radius}", f"map_hash@{k}", f"map@{k}", "map", "mrr")
    hot_q, hot_db = np.eye(3, dtype=int)[q_labels], np.eye(3, dtype=int)[db_labels]
    if leave_one_out:
        pairs = ((query, q_labels), (query, hot_q))
    else:
        pairs = ((query, q_labels, db, db_labels), (query, hot_q, db, hot_db))
    try:
        single = evaluate(*pairs[0], metrics=names, distance="hamming")
    except EvaluationInputError:
        with pytest.raises(EvaluationInputError):
            evaluate(*pairs[1], metrics=names, distance="hamming")
        return
    assert evaluate(*pairs[1], metrics=names, distance="hamming") == pytest.approx(single)
