"""Factory strings, metrics and search parameters: what is accepted, what is refused."""

from __future__ import annotations

import pytest

from deepembed import index
from deepembed.errors import DataError
from deepembed.index.specs import check_params, padded_bytes, parse_spec


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Flat", "Flat"),
        ("IVF64,Flat", "IVF64,Flat"),
        ("IVF64,PQ8", "IVF64,PQ8"),
        ("IVF64,PQ8,RFlat", "IVF64,PQ8,RFlat"),
        ("OPQ8,IVF64,PQ8", "OPQ8,IVF64,PQ8"),
        ("HNSW32", "HNSW32,Flat"),
        ("HNSW32,Flat", "HNSW32,Flat"),
        ("IVF64_HNSW16,Flat", "IVF64_HNSW16,Flat"),
        ("BFlat", "BFlat"),
        ("BIVF64", "BIVF64"),
        ("BIVF64_HNSW16", "BIVF64_HNSW16"),
        ("BHNSW16", "BHNSW16"),
        ("BHash16", "BHash16"),
    ],
)
def test_accepted_specs(text: str, canonical: str) -> None:
    assert parse_spec(text).text == canonical


@pytest.mark.parametrize(
    "text", ["IVF", "Flat,IVF", "HNSW", "IVF64,PQ8,Refine", "BIVF64junk", "LSH"]
)
def test_unknown_spec_lists_the_accepted_forms(text: str) -> None:
    with pytest.raises(DataError, match="accepted forms: float: Flat, IVF<n>,Flat") as info:
        parse_spec(text)
    assert "\n" not in str(info.value) and "BHash<b>" in str(info.value)


def test_binary_hnsw_quantizer_trap_names_the_right_spelling() -> None:
    # faiss reads "BIVF1024_BHNSW32" as an IVF with a flat quantizer, silently
    with pytest.raises(DataError, match="'BIVF1024_HNSW32'"):
        parse_spec("BIVF1024_BHNSW32")


@pytest.mark.parametrize(
    ("dim", "metric", "spec", "needle"),
    [
        (64, "hamming", "Flat", "metric 'hamming' needs a binary spec"),
        (64, "cosine", "BFlat", "takes metric 'hamming'"),
        (60, "hamming", "BFlat", "divisible by 8"),
        (30, "cosine", "IVF4,PQ8", "PQ8 needs a dimension divisible by 8"),
        (32, "manhattan", "Flat", "unknown index metric 'manhattan'"),
        (0, "cosine", "Flat", "dimension must be a positive integer"),
        (32, "cosine", "IVF0,Flat", "nlist must be positive"),
    ],
)
def test_bad_combinations(dim: int, metric: str, spec: str, needle: str) -> None:
    with pytest.raises(DataError, match=needle):
        index.create(dim, metric, spec)


def test_search_parameters_are_checked_against_the_spec() -> None:
    ivf, refine = parse_spec("IVF64,Flat"), parse_spec("IVF64,PQ8,RFlat")
    assert check_params(refine, {"nprobe": 8.0, "k_factor": 2}) == {"nprobe": 8, "k_factor": 2.0}
    with pytest.raises(
        DataError, match=r"'efSearch' does not apply to IVF64,Flat \(takes: nprobe\)"
    ):
        check_params(ivf, {"efSearch": 8})
    with pytest.raises(DataError, match="takes: no search parameters"):
        check_params(parse_spec("Flat"), {"nprobe": 1})
    for bad in (0, -3, 2.5, "8", True):
        with pytest.raises(DataError, match="nprobe must be"):
            check_params(ivf, {"nprobe": bad})
    with pytest.raises(DataError, match="k_factor must be at least 1"):
        check_params(refine, {"k_factor": 0.5})


def test_padding_sizes_and_grids() -> None:
    assert [padded_bytes(b) for b in (1, 4, 6, 12, 17, 24, 48, 64, 128)] == [
        4, 4, 8, 16, 20, 32, 64, 64, 128,
    ]  # fmt: skip
    assert parse_spec("IVF8,Flat").grid() == [{"nprobe": n} for n in (1, 2, 4, 8)]
    assert len(parse_spec("IVF8,PQ4,RFlat").grid()) == 4 * 5
    assert parse_spec("Flat").grid() == [{}] and parse_spec("BHash8").params == ()
