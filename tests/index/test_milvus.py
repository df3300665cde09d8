"""The Index protocol on Milvus against brute force, on milvus-lite (a temp .db per test).

The tests taking `new_uri` are the protocol tests: test_milvus_server.py imports them and runs
them again on a real Milvus server by overriding that fixture. The rest are milvus-lite's own
(binary refused, unreachable URI, spec parsing, build and the CLI)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from deepembed import index
from deepembed.cli.main import app
from deepembed.errors import DataError
from deepembed.index import MilvusIndex
from deepembed.inference import Embeddings
from tests.index import test_protocol
from tests.index.conftest import assert_padded_past_the_end, exact_top, recall
from tests.index.test_filters import FILTERS, _matches, _metadata
from tests.index.test_protocol import DIM, K, N

NewUri = Callable[[], str]
data = test_protocol.data  # the fixture: the faiss protocol tests' gallery, queries and ids
# spec, metric, search parameters, recall@10 bar (1.0: ids and distances equal brute force)
FLOAT_CASES = [
    ("FLAT", "cosine", {}, 1.0),
    ("FLAT", "euclidean", {}, 1.0),
    ("FLAT", "inner_product", {}, 1.0),
    ("HNSW:M=16,efConstruction=100", "cosine", {"ef": 128}, 0.95),
    ("IVF_FLAT:nlist=16", "euclidean", {"nprobe": 16}, 0.99),
    ("IVF_SQ8:nlist=16", "cosine", {"nprobe": 16}, 0.8),
]


@pytest.fixture(scope="module")
def new_uri(tmp_path_factory: pytest.TempPathFactory) -> NewUri:
    """A fresh index URI on each call: a new collection in this module's milvus-lite file."""
    path = tmp_path_factory.mktemp("milvus") / "gallery.db"
    counter = itertools.count()
    return lambda: f"{path}#c{next(counter)}"


def filled(new_uri: NewUri, data: tuple, spec: str = "FLAT", metric: str = "cosine") -> MilvusIndex:
    """An index of the gallery with labels (id % 100) and test_filters' metadata."""
    gallery, _, ids = data
    idx = index.create(DIM, metric, spec, uri=new_uri())
    assert isinstance(idx, MilvusIndex) and isinstance(idx, index.Index)
    idx.add(gallery, ids, labels=ids % 100, metadata=_metadata(ids))
    return idx


@pytest.fixture(scope="module")
def flat_index(new_uri: NewUri, data: tuple) -> Iterator[MilvusIndex]:
    """FLAT, euclidean, the whole gallery: shared by tests that only search."""
    idx = filled(new_uri, data, "FLAT", "euclidean")
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def hnsw_index(new_uri: NewUri, data: tuple) -> Iterator[MilvusIndex]:
    idx = filled(new_uri, data, "HNSW:M=8,efConstruction=64", "cosine")
    yield idx
    idx.close()


@pytest.fixture(scope="module")
def empty_index(new_uri: NewUri) -> Iterator[MilvusIndex]:
    idx = index.create(DIM, "cosine", "FLAT", uri=new_uri())
    assert isinstance(idx, MilvusIndex)
    yield idx
    idx.close()


def assert_matches_brute_force(
    idx: MilvusIndex, base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray, bar: float
) -> None:
    true_d, true_i = exact_top(base, base_ids, queries, K, idx.metric)
    d, found = idx.search(queries, K)
    assert d.shape == found.shape == (len(queries), K)
    assert d.dtype == np.float32 and found.dtype == np.int64
    if bar == 1.0:
        assert np.array_equal(found, true_i)
        assert np.allclose(d, true_d, rtol=1e-4, atol=1e-3)
    else:
        assert recall(found, true_i) >= bar


# -- protocol tests (also run on a server by test_milvus_server.py) ---------------------------
@pytest.mark.parametrize(("spec", "metric", "params", "bar"), FLOAT_CASES)
def test_float_specs_against_brute_force(
    spec: str, metric: str, params: dict, bar: float, data: tuple, new_uri: NewUri
) -> None:
    gallery, queries, ids = data
    idx = filled(new_uri, data, spec, metric)
    idx.set_params(**params)
    if spec != "FLAT":
        idx.save()  # a flush: the index is built on the sealed segment
    assert len(idx) == N and idx.params == params and idx.is_trained
    assert_matches_brute_force(idx, gallery, ids, queries, bar)
    idx.close()


@pytest.mark.parametrize("filters", FILTERS, ids=[str(f) for f in FILTERS])
def test_filters_equal_exact_search_over_the_subset(
    filters: dict, data: tuple, flat_index: MilvusIndex
) -> None:
    gallery, queries, ids = data
    keep = _matches(ids, ids % 100, filters)
    true_d, true_i = exact_top(gallery[keep], ids[keep], queries, K, "euclidean")
    d, found = flat_index.search(queries, K, filters=filters)
    assert np.array_equal(found, true_i)
    assert np.allclose(d, true_d, atol=1e-3)


def test_filtered_hnsw_returns_k_matching_items(data: tuple, hnsw_index: MilvusIndex) -> None:
    """min(k, matches) results, all matching, also for a 1% filter and one with 3 matches."""
    _, queries, ids = data
    idx = hnsw_index
    for filters in ({"label": [5]}, {"label": [5], "tags": "a"}, {"color": ["red", "blue"]}):
        keep = _matches(ids, ids % 100, filters)
        _, found = idx.search(queries, K, filters=filters)
        want = min(K, int(keep.sum()))
        assert ((found >= 0).sum(1) == want).all(), filters
        assert np.isin(found[:, :want], ids[keep]).all()
        assert (found[:, want:] == -1).all()


def test_filter_errors_and_empty_filters(data: tuple, flat_index: MilvusIndex) -> None:
    _, queries, _ = data
    idx = flat_index
    with pytest.raises(DataError, match="unknown filter key 'shape'; known: color, label"):
        idx.search(queries, K, filters={"shape": "round"})
    with pytest.raises(DataError, match="filter on label takes integer labels"):
        idx.search(queries, K, filters={"label": "three"})
    d, found = idx.search(queries, K, filters={"color": []})  # no value: nothing matches
    assert (found == -1).all() and np.isinf(d).all()
    _, found = idx.search(queries, K, filters={"color": "purple"})
    assert (found == -1).all()


def test_searcher_by_id_and_by_vector(data: tuple, flat_index: MilvusIndex) -> None:
    gallery, queries, ids = data
    searcher = index.Searcher(flat_index)
    hits = searcher.by_id(int(ids[7]), k=5)
    _, true_i = exact_top(gallery, ids, gallery[7:8], 6, "euclidean")
    assert [h.id for h in hits] == [i for i in true_i[0] if i != ids[7]][:5]
    assert all(h.label == h.id % 100 and h.metadata == _metadata(np.array([h.id]))[0] for h in hits)
    hits = searcher.by_vector(queries[0], k=3, filters={"color": "red"})
    assert len(hits) == 3 and all(h.metadata["color"] == "red" for h in hits)


def test_filter_values_compare_as_json(new_uri: NewUri) -> None:
    """As in the faiss backend: True is not 1, 1.0 is 1, null is a value; quotes and
    non-ASCII text survive the expression."""
    values = [True, 1, 1.0, None, "1", 'Zoë "Q"', [1, "x"]]
    idx = index.create(2, "euclidean", "FLAT", uri=new_uri())
    idx.add(np.ones((len(values), 2), np.float32), np.arange(len(values)),
            metadata=[{"v": v} for v in values])  # fmt: skip
    query = np.ones((1, 2), np.float32)
    for value, want in [(1, {1, 2, 6}), (True, {0}), (None, {3}), ("1", {4}),
                        ('Zoë "Q"', {5}), ("x", {6}), ([True, "1"], {0, 4})]:  # fmt: skip
        found = idx.search(query, 10, filters={"v": value})[1][0]
        assert set(found[found >= 0].tolist()) == want, value
    idx.close()


def test_missing_results_are_minus_one_and_inf(data: tuple, new_uri: NewUri) -> None:
    gallery, queries, ids = data
    idx = index.create(DIM, "euclidean", "HNSW", uri=new_uri())
    assert_padded_past_the_end(idx, gallery, queries, ids)
    idx.close()


def test_removals_are_visible_to_the_next_search(data: tuple, new_uri: NewUri) -> None:
    gallery, queries, ids = data
    idx = filled(new_uri, data, "FLAT", "euclidean")
    _, found = idx.search(queries, K)
    gone = np.unique(found[:, :3])  # the nearest items of every query
    idx.remove(gone)
    assert len(idx) == N - len(gone)
    keep = ~np.isin(ids, gone)
    assert_matches_brute_force(idx, gallery[keep], ids[keep], queries, 1.0)
    _, filtered = idx.search(queries, K, filters={"label": np.unique(gone % 100).tolist()})
    assert not np.isin(filtered, gone).any()
    with pytest.raises(DataError, match=f"no item with id {gone[0]} in the index"):
        idx.get(gone[:1])
    assert idx.next_id() == ids.max() + 1  # removed ids are not reused
    idx.close()


def test_bad_ids_are_refused_and_nothing_changes(data: tuple, new_uri: NewUri) -> None:
    gallery, _, ids = data
    idx = index.create(DIM, "cosine", "FLAT", uri=new_uri())
    idx.add(gallery[:100], ids[:100])
    fresh = np.array([ids[200], ids[50], ids[201]])  # one already present
    with pytest.raises(DataError, match=r"duplicate ids: 1 already in the index, e\.g\. \["):
        idx.add(gallery[200:203], fresh)
    with pytest.raises(DataError, match="duplicate ids within the batch"):
        idx.add(gallery[200:202], [ids[300], ids[300]])
    with pytest.raises(DataError, match=r"no item with id \d+ in the index \(1 unknown\)"):
        idx.remove([ids[10], ids[500]])
    assert len(idx) == 100
    assert [it.id for it in idx.get(ids[[10, 99]])] == ids[[10, 99]].tolist()
    with pytest.raises(DataError, match="no item with id"):
        idx.get([ids[200]])
    idx.close()


BAD_VECTORS = [
    (np.ones((2, DIM + 1), np.float32), rf"vectors must be \(n, {DIM}\), got shape \(2, 17\)"),
    (np.full((2, DIM), np.nan, np.float32), "vectors contain NaN or infinite values"),
    (np.ones((2, DIM), np.uint8), "takes float vectors, got uint8"),
    (np.zeros((2, DIM), np.float32), "vectors contain a zero vector"),
]


@pytest.mark.parametrize(("vectors", "message"), BAD_VECTORS, ids=["dim", "nan", "uint8", "zero"])
def test_bad_vectors_are_the_faiss_backends_errors(
    vectors: np.ndarray, message: str, empty_index: MilvusIndex
) -> None:
    """The same one-line DataError (checks.py) as a faiss index, and nothing added."""
    idx = empty_index
    faiss_idx = index.create(DIM, "cosine", "Flat")
    for backend in (idx, faiss_idx):
        with pytest.raises(DataError, match=message):
            backend.add(vectors, [1, 2])
        with pytest.raises(DataError, match=message.replace("vectors", "queries")):
            backend.search(vectors, 3)
    assert len(idx) == 0
    with pytest.raises(DataError, match="k must be a positive integer"):
        idx.search(np.ones((1, DIM), np.float32), 0)


def test_reopen_keeps_items_and_settings(data: tuple, new_uri: NewUri) -> None:
    gallery, queries, ids = data
    uri = new_uri()
    idx = index.create(DIM, "euclidean", "HNSW:M=8", uri=uri)
    sources = [f"/images/{i}.png" if i % 3 else None for i in ids.tolist()]
    idx.add(gallery, ids, labels=ids % 100, metadata=_metadata(ids), sources=sources)
    idx.set_params(ef=100)
    idx.class_names = {0: "zero", 1: "one"}
    before = idx.search(queries, K, filters={"color": "red"})
    idx.close()
    again = index.open(uri)
    assert isinstance(again, MilvusIndex)
    assert (again.dim, again.metric, again.spec) == (
        DIM,
        "euclidean",
        "HNSW:M=8,efConstruction=200",
    )
    assert again.params == {"ef": 100} and again.class_names == {0: "zero", 1: "one"}
    assert len(again) == N and again.next_id() == ids.max() + 1
    assert again.sources() == {s for s in sources if s}
    item = again.get([ids[4]])[0]
    assert item.label == ids[4] % 100 and item.source == sources[4]
    assert item.metadata == _metadata(ids[4:5])[0]
    assert np.array_equal(item.vector, gallery[4])
    after = again.search(queries, K, filters={"color": "red"})
    assert np.array_equal(after[1], before[1]) and np.allclose(after[0], before[0])
    facts = again.info()
    assert facts["items"] == N and facts["metadata_keys"] == ["color", "size", "tags"]
    again.close()


def test_search_parameters_validated(data: tuple, hnsw_index: MilvusIndex) -> None:
    _, queries, _ = data
    idx = hnsw_index
    with pytest.raises(DataError, match=r"'nprobe' does not apply to HNSW:M=8,ef.*takes: ef"):
        idx.search(queries, K, params={"nprobe": 4})
    with pytest.raises(DataError, match="ef must be a positive integer"):
        idx.set_params(ef=0)
    a = idx.search(queries, K, params={"efSearch": 200})  # the faiss backend's name
    b = idx.search(queries, K, params={"ef": 200})
    assert np.array_equal(a[1], b[1]) and idx.params == {"ef": 64}


# -- milvus-lite's own ---------------------------------------------------------------------
def test_short_results_are_completed_by_exact_search(
    data: tuple, new_uri: NewUri, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An approximate search that comes back short of min(k, matches) (HNSW under a tight
    filter can) is redone exactly over the matching items."""
    gallery, queries, ids = data
    idx = filled(new_uri, data, "HNSW:M=8", "euclidean")
    search = idx.client.search

    def short(*args: object, **kwargs: object) -> list[SimpleNamespace]:
        hits = search(*args, **kwargs)  # each row loses its last 3 results
        return [SimpleNamespace(ids=h.ids[:-3], distances=h.distances[:-3]) for h in hits]

    monkeypatch.setattr(idx.client, "search", short)
    for filters in (None, {"color": "red"}):
        keep = _matches(ids, ids % 100, filters or {})
        true_d, true_i = exact_top(gallery[keep], ids[keep], queries, K, "euclidean")
        d, found = idx.search(queries, K, filters=filters)
        assert np.array_equal(found, true_i) and np.allclose(d, true_d, atol=1e-3)
    idx.close()


def test_binary_codes_are_refused_on_milvus_lite(tmp_path: Path) -> None:
    uri = tmp_path / "codes.db"
    for spec, metric in (("BIN_FLAT", "hamming"), ("BFlat", "hamming")):
        with pytest.raises(DataError, match=r"milvus-lite 3\.x .* has no binary vectors.*faiss"):
            index.create(64, metric, spec, uri=uri)
    codes = np.random.default_rng(0).integers(0, 256, (10, 8), dtype=np.uint8)
    signs = np.where(np.unpackbits(codes, axis=1) > 0, 1.0, -1.0).astype(np.float32)
    gallery = Embeddings.from_codes(signs, np.zeros(10, np.int64), np.arange(10))
    with pytest.raises(DataError, match="has no binary vectors"):
        index.build(gallery, uri=uri)
    assert not uri.exists()


def test_unreachable_server_is_one_line_naming_the_uri() -> None:
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"^cannot reach Milvus at http://127\.0\.0\.1:1: "):
        index.create(DIM, "cosine", "FLAT", uri="http://127.0.0.1:1")
    with pytest.raises(DataError, match=r"cannot reach Milvus at http://127\.0\.0\.1:1"):
        index.open("http://127.0.0.1:1#gallery")
    assert time.perf_counter() - start < 5


def test_missing_and_taken_collections(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no Milvus index at .*nothing\.db: .* does not exist"):
        index.open(tmp_path / "nothing.db")
    uri = f"{tmp_path / 'a.db'}#first"
    index.create(DIM, "cosine", "FLAT", uri=uri).close()
    with pytest.raises(DataError, match="already holds collection 'first'"):
        index.create(DIM, "cosine", "FLAT", uri=uri)
    with pytest.raises(DataError, match=r"no deepembed index at .*#second"):
        index.open(f"{tmp_path / 'a.db'}#second")
    with pytest.raises(DataError, match="letters, digits and _ only"):
        index.create(DIM, "cosine", "FLAT", uri=f"{tmp_path / 'a.db'}#no-dash")
    with pytest.raises(DataError, match="save\\(\\) cannot copy it"):
        index.open(uri).save(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("hnsw", "HNSW:M=16,efConstruction=200"),
        ("HNSW:M=32", "HNSW:M=32,efConstruction=200"),
        ("HNSW32", "HNSW:M=32,efConstruction=200"),  # faiss strings with a counterpart
        ("Flat", "FLAT"),
        ("IVF64,Flat", "IVF_FLAT:nlist=64"),
        ("IVF_SQ8:nlist=8", "IVF_SQ8:nlist=8"),
    ],
)
def test_specs_parse_to_canonical_text(spec: str, canonical: str, tmp_path: Path) -> None:
    idx = index.create(DIM, "cosine", spec, uri=tmp_path / "s.db")
    assert idx.spec == canonical
    idx.close()


@pytest.mark.parametrize(
    ("spec", "metric", "message"),
    [
        ("IVF16,PQ8", "cosine", "unknown Milvus index spec 'IVF16,PQ8'; accepted: FLAT"),
        ("HNSW:nlist=4", "cosine", r"'nlist=4' does not apply \(takes: M, efConstruction\)"),
        ("HNSW:M=0", "cosine", "M must be a positive integer"),
        ("FLAT", "hamming", "needs a binary spec"),
        ("FLAT", "manhattan", "unknown index metric 'manhattan'"),
    ],
)
def test_bad_specs_are_refused(spec: str, metric: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message):
        index.create(DIM, metric, spec, uri=tmp_path / "s.db")


def test_build_and_the_cli_write_to_milvus_lite(data: tuple, tmp_path: Path) -> None:
    gallery, queries, ids = data
    embeddings = Embeddings(gallery, ids % 3, ids, {0: "a", 1: "b", 2: "c"})
    built = index.build(embeddings, spec="HNSW:M=8", uri=tmp_path / "b.db")
    assert len(built) == N and built.class_names == {0: "a", 1: "b", 2: "c"}
    built.close()
    embeddings.save(tmp_path / "gallery.npz")
    uri = f"{tmp_path / 'cli.db'}#gallery"
    result = CliRunner().invoke(
        app, ["index", "build", str(tmp_path / "gallery.npz"), "--spec", "FLAT", "--uri", uri]
    )
    assert result.exit_code == 0 and f"indexed {N} items (16-d, cosine, FLAT) -> {uri}" in (
        result.output
    ), result.output
    opened = index.open(uri)
    _, true_i = exact_top(gallery, ids, queries, K, "cosine")
    assert np.array_equal(opened.search(queries, K)[1], true_i)
    opened.close()
