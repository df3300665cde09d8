"""Property-based: every rank metric of evaluate() on Hamming codes is the same from the
popcount kernels as from the plain torch path, on small random codes (heavy ties), single-
and multi-label, leave-one-out and query/gallery."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deepembed.evaluation import EvaluationInputError, evaluate, knn
from deepembed.evaluation import _knn_hamming as knn_hamming
from tests.evaluation.test_hashing_properties import hashing_case

SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@SETTINGS
@given(hashing_case(), st.integers(1, 4))
def test_kernels_equal_the_plain_path(case, chunk_size):
    query, q_labels, db, db_labels, leave_one_out, radius, k = case
    names = [
        f"hamming_precision@{radius}", f"map_hash@{k}", f"map@{k}", f"recall@{k}",
        f"precision@{k}", "map", "mrr", "r_precision", "map@r",
    ]  # fmt: skip
    if np.ndim(q_labels) == 1:
        names.append(f"knn_accuracy@{k}")
    args = (query, q_labels) if leave_one_out else (query, q_labels, db, db_labels)
    kw = {"metrics": names, "distance": "hamming", "chunk_size": chunk_size}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(knn_hamming, "_HAMMING_KERNELS", False)
        try:
            want = evaluate(*args, **kw)
        except EvaluationInputError:
            with pytest.raises(EvaluationInputError):
                m.setattr(knn_hamming, "_HAMMING_KERNELS", True)
                m.setattr(knn_hamming, "_HAMMING_MIN_PAIRS", 0)
                evaluate(*args, **kw)
            return
        m.setattr(knn_hamming, "_HAMMING_KERNELS", True)
        m.setattr(knn_hamming, "_HAMMING_MIN_PAIRS", 0)
        got = evaluate(*args, **kw)
    assert got == pytest.approx(want, abs=1e-12)


@SETTINGS
@given(st.data())
def test_kernel_lists_equal_the_plain_path(data):
    bits = data.draw(st.integers(1, 6))
    n_db = data.draw(st.integers(1, 12))
    leave_one_out = data.draw(st.booleans())
    db = data.draw(arrays(np.bool_, (n_db, bits)))
    query = (
        db if leave_one_out else data.draw(arrays(np.bool_, (data.draw(st.integers(1, 5)), bits)))
    )
    db_labels = data.draw(arrays(np.int64, n_db, elements=st.integers(0, 2)))
    q_labels = (
        db_labels
        if leave_one_out
        else data.draw(arrays(np.int64, len(query), elements=st.integers(0, 2)))
    )
    k = data.draw(st.integers(1, n_db + 1))
    gallery = None if leave_one_out else db
    kw = {
        "exclude_self": leave_one_out, "chunk_size": data.draw(st.integers(1, 4)),
        "query_labels": q_labels, "gallery_labels": None if leave_one_out else db_labels,
        "histograms": True,
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as m:
        m.setattr(knn_hamming, "_HAMMING_KERNELS", False)
        want = list(knn.iter_knn(query, gallery, k, "hamming", **kw))
        m.setattr(knn_hamming, "_HAMMING_KERNELS", True)
        m.setattr(knn_hamming, "_HAMMING_MIN_PAIRS", 0)
        got = list(knn.iter_knn(query, gallery, k, "hamming", **kw))
    fields = ("distances", "indices", "tied_beyond", "relevant_tied_beyond")
    for field in fields:
        a = np.concatenate([getattr(c, field) for c in got])
        b = np.concatenate([getattr(c, field) for c in want])
        np.testing.assert_array_equal(a, b, field)
    if want[0].distance_counts is not None:  # k == 0 (one row, leave-one-out): none
        for field in ("distance_counts", "relevant_distance_counts"):
            a = np.concatenate([getattr(c, field) for c in got])
            b = np.concatenate([getattr(c, field) for c in want])
            np.testing.assert_array_equal(a, b, field)
