"""Filtered search: on flat indexes exactly the search over the matching subset; on every
type min(k, matches) results, all matching; unknown keys refused."""

from __future__ import annotations

import numpy as np
import pytest

from deepembed import index
from deepembed.errors import DataError
from deepembed.index import faiss_parts as fp
from tests.index.conftest import clustered, exact_top, recall

N, DIM, K = 1200, 8, 10
COLORS = ["red", "green", "blue", "black"]


def _metadata(ids: np.ndarray) -> list[dict]:
    return [
        {"color": COLORS[i % 4], "size": int(i % 5), "tags": ["a", "b"] if i % 2 else ["c"]}
        for i in ids.tolist()
    ]


def _matches(ids: np.ndarray, labels: np.ndarray, filters: dict) -> np.ndarray:
    """The filter applied the obvious way: a boolean mask over the items."""
    meta = _metadata(ids)
    keep = np.ones(len(ids), bool)
    for key, value in filters.items():
        values = value if isinstance(value, list) else [value]
        if key == "label":
            keep &= np.isin(labels, values)
        else:
            keep &= np.array(
                [
                    any(v in (m[key] if isinstance(m[key], list) else [m[key]]) for v in values)
                    for m in meta
                ]
            )
    return keep


@pytest.fixture(scope="module")
def gallery() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(N, DIM)
    ids = np.random.default_rng(0).permutation(50_000)[:N]
    labels = ids % 100  # each label: ~1% of the gallery
    return vectors, ids, labels, clustered(20, DIM, seed=3)


FILTERS = [
    {"label": [3, 7]},
    {"color": "red"},
    {"color": ["red", "blue"], "size": 2},
    {"tags": "a", "label": list(range(50))},
    {"size": 4.0},  # integral floats match ints
]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("filters", FILTERS, ids=[str(f) for f in FILTERS])
def test_flat_filtered_search_is_exact_search_over_the_subset(
    gallery: tuple, filters: dict, metric: str
) -> None:
    vectors, ids, labels, queries = gallery
    idx = index.create(DIM, metric, "Flat")
    idx.add(vectors, ids, labels, _metadata(ids))
    keep = _matches(ids, labels, filters)
    true_d, true_i = exact_top(vectors[keep], ids[keep], queries, K, metric)
    d, found = idx.search(queries, K, filters=filters)
    assert np.array_equal(found, true_i)
    assert np.allclose(d, true_d, atol=1e-4)


APPROXIMATE = [
    ("IVF32,Flat", {"nprobe": 1}),
    ("HNSW8", {"efSearch": 16}),
    ("IVF16,PQ4,RFlat", {"nprobe": 1, "k_factor": 1}),
    ("IVF16_HNSW8,Flat", {"nprobe": 1, "efSearch": 16}),
    ("BFlat", {}),
    ("BIVF16", {"nprobe": 1}),  # no selector in faiss: exact search over the subset
    ("BHNSW8", {"efSearch": 16}),
    ("BHash8", {}),
]


@pytest.mark.parametrize("exact_subset", [0, fp.EXACT_SUBSET], ids=["selector", "small-exact"])
@pytest.mark.parametrize(("spec", "params"), APPROXIMATE, ids=[s[0] for s in APPROXIMATE])
def test_k_results_whenever_k_items_match(
    gallery: tuple, spec: str, params: dict, exact_subset: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fp, "EXACT_SUBSET", exact_subset)  # 0: faiss's selector path
    vectors, ids, labels, queries = gallery
    binary = spec.startswith("B")
    data = np.packbits(vectors > 0, axis=1) if binary else vectors  # 8 bits: padded to 4 bytes
    idx = index.create(DIM, "hamming" if binary else "euclidean", spec)
    idx.train(data)
    idx.add(data, ids, labels, _metadata(ids))
    idx.remove(ids[labels == 5][:3])  # tombstones too, where the type keeps them
    alive = ~np.isin(ids, ids[labels == 5][:3])
    query = np.packbits(queries > 0, axis=1) if binary else queries
    for filters in ({"label": 5}, {"label": [5, 6]}, {"color": "red", "size": 1}):
        keep = _matches(ids, labels, filters) & alive  # 9 to ~48 of 1,200 items
        found = idx.search(query, K, filters=filters, params=params)[1]
        want = min(K, int(keep.sum()))
        assert ((found >= 0).sum(axis=1) == want).all(), (filters, (found >= 0).sum(axis=1))
        assert np.isin(found[found >= 0], ids[keep]).all()


def test_filter_edge_cases(gallery: tuple) -> None:
    vectors, ids, labels, queries = gallery
    idx = index.create(DIM, "cosine", "HNSW8")
    idx.add(vectors, ids, labels, _metadata(ids))
    with pytest.raises(
        DataError, match="unknown filter key 'colour'; known: color, label, size, tags"
    ):
        idx.search(queries, K, filters={"colour": "red"})
    with pytest.raises(DataError, match="filter on label takes integer labels"):
        idx.search(queries, K, filters={"label": "3"})
    with pytest.raises(DataError, match="values must be str, number, bool or null"):
        idx.search(queries, K, filters={"color": {"r": 1}})
    for nothing in ({"label": []}, {"color": "purple"}, {"label": 3, "color": "green"}):
        d, found = idx.search(queries, K, filters=nothing)
        assert (found == -1).all() and np.isinf(d).all()
    assert (idx.search(queries, K, filters={})[1] >= 0).all()  # no filter


@pytest.mark.parametrize("spec", ["IVF16,PQ4", "HNSW8"])
def test_small_subsets_are_searched_exactly(gallery: tuple, spec: str) -> None:
    vectors, ids, labels, queries = gallery
    idx = index.create(DIM, "euclidean", spec)
    idx.train(vectors)
    idx.add(vectors, ids, labels)
    keep = labels < 30  # ~360 items, under EXACT_SUBSET: the answer of exact search
    want = exact_top(vectors[keep], ids[keep], queries, K, "euclidean")
    params = {"nprobe": 1} if spec.startswith("IVF") else {"efSearch": 16}
    d, found = idx.search(queries, K, filters={"label": list(range(30))}, params=params)
    assert np.array_equal(found, want[1]) and np.allclose(d, want[0], atol=1e-4)


@pytest.mark.parametrize(
    ("spec", "params"), [("IVF32,Flat", {"nprobe": 1}), ("HNSW16", {"efSearch": 40})]
)
def test_large_subsets_widen_the_search(
    spec: str, params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filter keeping 10%: nprobe / efSearch scaled by 10 keep recall near the unfiltered
    one; without the widening (patched out) it drops."""
    monkeypatch.setattr(fp, "EXACT_SUBSET", 0)
    vectors, queries = clustered(4000, 16, clusters=100), clustered(50, 16, seed=9, clusters=100)
    ids, labels = np.arange(4000), np.arange(4000) % 10
    idx = index.create(16, "euclidean", spec)
    idx.train(vectors)
    idx.add(vectors, ids, labels)
    truth = exact_top(vectors[labels == 0], ids[labels == 0], queries, K, "euclidean")[1]
    widened = recall(idx.search(queries, K, filters={"label": 0}, params=params)[1], truth)
    monkeypatch.setattr(fp, "widened", lambda spec, params, share: params)
    plain = recall(idx.search(queries, K, filters={"label": 0}, params=params)[1], truth)
    assert widened >= 0.9 and widened > plain + 0.1, (widened, plain)


def test_widened_parameters() -> None:
    from deepembed.index.specs import parse_spec

    ivf = parse_spec("IVF100_HNSW8,Flat")
    assert fp.widened(ivf, {"nprobe": 8, "efSearch": 64}, 0.1) == {"nprobe": 80, "efSearch": 64}
    assert fp.widened(ivf, {"nprobe": 8, "efSearch": 64}, 0.01)["nprobe"] == 100  # all lists
    hnsw = parse_spec("HNSW32")
    assert fp.widened(hnsw, {"efSearch": 64}, 0.5) == {"efSearch": 128}
    assert fp.widened(hnsw, {"efSearch": 64}, 0.001) == {"efSearch": fp.MAX_EF_SEARCH}
