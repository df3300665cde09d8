"""The one-query fast paths (issue 15's queries/s bar) against the plain computation:
normalisation and checks on faiss's norm kernels, the last-column test for short rows, the
position -> id mapping, the direct faiss call; and one query at a time equals the batch."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deepembed import index
from deepembed.errors import DataError
from deepembed.index import checks
from deepembed.index import faiss_parts as fp
from tests.index.conftest import clustered

finite_rows = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 9), st.integers(1, 40)),
    elements=st.floats(-1e3, 1e3, width=32),
)


@settings(max_examples=150, deadline=None)
@given(finite_rows)
def test_floats_are_the_plain_unit_rows_and_one_row_equals_its_batch_row(x: np.ndarray) -> None:
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    if not norms.all():
        with pytest.raises(DataError, match="zero vector"):
            checks.floats(x, "cosine")
        return
    unit = checks.floats(x, "cosine")
    assert unit.dtype == np.float32 and unit.flags.c_contiguous
    np.testing.assert_allclose(unit, x / norms, rtol=1e-5, atol=1e-6)
    for i in range(len(x)):  # the one-query path gives the batch's bits exactly
        assert checks.floats(x[i : i + 1].copy(), "cosine").tobytes() == unit[i].tobytes()
    for metric in ("euclidean", "inner_product"):  # as given, checked
        assert checks.floats(x, metric) is x


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("metric", ["cosine", "euclidean", "inner_product"])
def test_floats_refuse_nan_and_infinity_one_row_and_batch(n: int, metric: str) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((n, 4), np.float32)
        x[n - 1, 2] = bad
        with pytest.raises(DataError, match="NaN or infinite"):
            checks.floats(x, metric)


@pytest.mark.parametrize("n", [1, 3])
def test_floats_zero_rows_refused_for_cosine_only(n: int) -> None:
    x = np.ones((n, 4), np.float32)
    x[n - 1] = 0
    with pytest.raises(DataError, match="zero vector"):
        checks.floats(x, "cosine")
    assert checks.floats(x, "euclidean") is x


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("scale", [1e25, 1e-25])
def test_floats_whose_float32_square_overflows_or_underflows_still_normalise(
    n: int, scale: float
) -> None:
    """1e25 squared overflows float32 and 1e-25 squared underflows to 0: the kernel's check
    fails and the float64 path normalises them (neither refused nor made zero)."""
    x = (np.arange(1, 4 * n + 1, dtype=np.float64).reshape(n, 4) * scale).astype(np.float32)
    want = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(checks.floats(x, "cosine"), want, rtol=1e-5)
    assert checks.floats(x, "euclidean") is x


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_complete_and_mapped_equal_the_plain_computation(q: int, k: int, data) -> None:
    """Rows padded at their end with -1, as faiss returns them."""
    found = data.draw(st.lists(st.integers(0, k), min_size=q, max_size=q))
    positions = np.full((q, k), -1, np.int64)
    for row, n in enumerate(found):
        positions[row, :n] = data.draw(st.permutations(range(20)))[:n]
    view = np.arange(100, 120, dtype=np.int64)[::-1].copy()  # position p -> id 119 - p
    assert fp.complete(positions) == bool((positions >= 0).all())
    want = np.where(positions >= 0, view[np.maximum(positions, 0)], -1)
    np.testing.assert_array_equal(fp.mapped(view, positions), want)
    raw = np.random.default_rng(q).random((q, k)).astype(np.float32)
    d = fp.to_distances(raw, positions, "cosine")
    np.testing.assert_array_equal(d, np.where(positions >= 0, 1.0 - raw, np.inf))


def test_faiss_search_equals_faiss_own_search_float_and_binary() -> None:
    x = clustered(300, 16)
    flat = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    flat.train(x)
    flat.add(x)
    params = faiss.SearchParametersIVF(nprobe=3)
    # faiss's own numpy search: pytorch-metric-learning (imported by other tests) installs
    # faiss.contrib.torch_utils, whose `search` takes no params and keeps this one aside
    own = getattr(flat, "search_numpy", flat.search)
    for rows in (x[:1], x[:5]):
        got, want = fp.faiss_search(flat, rows, 7, params), own(rows, 7, params=params)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    codes = np.random.default_rng(0).integers(0, 256, size=(300, 8), dtype=np.uint8)
    binary = faiss.IndexBinaryFlat(64)
    binary.add(codes)
    own = getattr(binary, "search_numpy", binary.search)
    got, want = fp.faiss_search(binary, codes[:3], 5), own(codes[:3], 5)
    assert got[0].dtype == np.int32
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rows of shape"):  # never a read past the rows
        fp.faiss_search(flat, x[:1, :8], 3)
    with pytest.raises(ValueError, match="rows of shape"):
        fp.faiss_search(binary, codes[:1, :4], 3)


SPECS = [
    ("Flat", "cosine"),
    ("IVF16,Flat", "cosine"),
    ("IVF16,PQ8,RFlat", "cosine"),
    ("HNSW16", "euclidean"),
    ("BFlat", "hamming"),
    ("BIVF16", "hamming"),
]


@pytest.mark.parametrize(("spec", "metric"), SPECS, ids=[s[0] for s in SPECS])
@pytest.mark.parametrize("dead", [False, True], ids=["live", "with-removals"])
def test_one_query_at_a_time_equals_the_batch(spec: str, metric: str, dead: bool) -> None:
    """7 queries (below the BLAS rule's 8, so both use the same faiss kernel) one by one
    and in one call: the same ids and distances."""
    binary = metric == "hamming"
    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 256, (500, 8), np.uint8) if binary else clustered(500, 16)
    queries = gallery[:7] if binary else clustered(7, 16, seed=1)
    idx = index.create(64 if binary else 16, metric, spec)
    idx.train(gallery)
    idx.add(gallery, np.arange(1000, 1500))
    if dead:
        idx.remove(np.arange(1000, 1500, 3))
    batch_d, batch_ids = idx.search(queries, 12)
    for i in range(len(queries)):
        d, ids = idx.search(queries[i : i + 1], 12)
        np.testing.assert_array_equal(ids[0], batch_ids[i])
        np.testing.assert_array_equal(d[0], batch_d[i])
    assert not np.isin(batch_ids, np.arange(1000, 1500, 3)).any() or not dead
