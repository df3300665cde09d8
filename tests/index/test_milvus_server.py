"""The Index protocol on a real Milvus server: PyPI's `milvus==2.3.5` (a standalone server
binary with a Python launcher), in its own venv, started once per session on loopback ports.

The float protocol tests are test_milvus.py's, run again here with `new_uri` naming a new
collection on the server; binary codes (BIN_FLAT / BIN_IVF_FLAT, hamming) are tested here
only, milvus-lite 3.x having no binary vectors. The launcher needs old packages (see
../shared/ENVIRONMENT.md), so its venv is built once (about a minute) and cached under
~/.cache/deepembed/milvus-server-venv-<hash>; without a package registry the tests skip."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deepembed import index
from deepembed.errors import DataError
from tests.index.conftest import brute_force
from tests.index.test_milvus import (  # noqa: F401  (protocol tests, run again on the server)
    NewUri,
    data,
    empty_index,
    flat_index,
    hnsw_index,
    test_bad_ids_are_refused_and_nothing_changes,
    test_bad_vectors_are_the_faiss_backends_errors,
    test_filter_errors_and_empty_filters,
    test_filter_values_compare_as_json,
    test_filtered_hnsw_returns_k_matching_items,
    test_filters_equal_exact_search_over_the_subset,
    test_float_specs_against_brute_force,
    test_missing_results_are_minus_one_and_inf,
    test_removals_are_visible_to_the_next_search,
    test_reopen_keeps_items_and_settings,
    test_search_parameters_validated,
    test_searcher_by_id_and_by_vector,
)

pytestmark = pytest.mark.serial

SERVER_PACKAGES = ["milvus==2.3.5", "pymilvus<2.4", "setuptools<70", "marshmallow<4"]
PIP_FLAGS = ["-q", "--retries", "1", "--timeout", "30"]  # offline: fail in seconds, then skip
LAUNCHER = Path(__file__).with_name("milvus_launcher.py")
N, BITS, Q, K = 1000, 64, 30, 10


def server_venv() -> Path:
    """The launcher's venv, built once per package list and Python (under a lock)."""
    cache = Path.home() / ".cache" / "deepembed"  # not $DEEPEMBED_CACHE: a temp dir in tests
    key = hashlib.sha256("\n".join([*SERVER_PACKAGES, sys.version]).encode()).hexdigest()[:16]
    venv = cache / f"milvus-server-venv-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".milvus-server-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        base_python = getattr(sys, "_base_executable", sys.executable)
        steps = [
            [base_python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", *PIP_FLAGS, *SERVER_PACKAGES],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode:
                shutil.rmtree(venv, ignore_errors=True)
                last = (done.stderr.strip().splitlines() or ["?"])[-1]
                pytest.skip(f"cannot build the Milvus server venv ({' '.join(step[:3])}): {last}")
        (venv / ".complete").touch()
    return venv


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """http://127.0.0.1:PORT of a Milvus standalone server, stopped at the end."""
    venv = server_venv()
    base = tmp_path_factory.mktemp("milvus-server")
    proc = subprocess.Popen(
        [str(venv / "bin" / "python"), str(LAUNCHER), str(base)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        port = proc.stdout.readline().strip()  # once the server is healthy
        if not port.isdigit():
            proc.kill()
            pytest.fail(f"the Milvus server did not start: {port} {proc.communicate()[1][-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def new_uri(milvus_server: str) -> NewUri:
    """A new collection on the server on each call."""
    counter = itertools.count()
    return lambda: f"{milvus_server}#c{next(counter)}"


@pytest.fixture(scope="module")
def codes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery codes (N, 8), query codes (Q, 8), ids): 64-bit codes with near neighbours."""
    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 256, size=(N, BITS // 8), dtype=np.uint8)
    flips = np.packbits(rng.random((Q, BITS)) < 0.1, axis=1)  # ~6 bits from a gallery code
    return gallery, gallery[:Q] ^ flips, rng.permutation(100_000)[:N]


def assert_hamming_top(
    found: np.ndarray, d: np.ndarray, base: np.ndarray, base_ids: np.ndarray, queries: np.ndarray
) -> None:
    """Every distance the true one, and the k smallest (ties may order ids differently)."""
    dist = brute_force(base, queries, "hamming")
    position = {int(i): p for p, i in enumerate(base_ids)}
    true_of_found = np.array([[dist[q, position[int(i)]] for i in row]
                              for q, row in enumerate(found)])  # fmt: skip
    assert np.array_equal(d, true_of_found)
    assert np.array_equal(d, np.sort(dist, axis=1)[:, :K])


@pytest.mark.parametrize(
    ("spec", "params"), [("BIN_FLAT", {}), ("BIN_IVF_FLAT:nlist=16", {"nprobe": 16})]
)
def test_binary_codes_against_brute_force(
    spec: str, params: dict, codes: tuple, new_uri: NewUri
) -> None:
    gallery, queries, ids = codes
    uri = new_uri()
    idx = index.create(BITS, "hamming", spec, uri=uri)
    assert idx.binary and idx.spec == spec
    idx.add(gallery, ids, labels=ids % 10)
    if spec != "BIN_FLAT":
        idx.save()  # sealed: the server builds the binary index
    d, found = idx.search(queries, K, params=params)
    assert d.dtype == np.float32
    assert_hamming_top(found, d, gallery, ids, queries)
    keep = ids % 10 == 3
    d, found = idx.search(queries, K, filters={"label": 3}, params=params)
    assert_hamming_top(found, d, gallery[keep], ids[keep], queries)
    item = idx.get(ids[:1])[0]
    assert item.vector is not None and np.array_equal(item.vector, gallery[0])
    idx.close()
    again = index.open(uri)
    assert again.binary and len(again) == N
    assert np.array_equal(again.search(queries, K, filters={"label": 3}, params=params)[0], d)
    again.close()


def test_binary_removals_are_visible_to_the_next_search(codes: tuple, new_uri: NewUri) -> None:
    gallery, queries, ids = codes
    idx = index.create(BITS, "hamming", "BIN_IVF_FLAT:nlist=16", uri=new_uri())
    idx.add(gallery, ids)
    idx.save()
    _, found = idx.search(queries, K, params={"nprobe": 16})
    gone = np.unique(found[:, :2])
    idx.remove(gone)
    assert len(idx) == N - len(gone)
    d, found = idx.search(queries, K, params={"nprobe": 16})
    assert not np.isin(found, gone).any()
    keep = ~np.isin(ids, gone)
    assert_hamming_top(found, d, gallery[keep], ids[keep], queries)
    idx.close()


def test_binary_input_is_checked(codes: tuple, new_uri: NewUri) -> None:
    gallery, _, ids = codes
    idx = index.create(BITS, "hamming", "BFlat", uri=new_uri())  # the faiss name, translated
    assert idx.spec == "BIN_FLAT"
    with pytest.raises(DataError, match=r"takes packed uint8 codes \(n, 8\), got float32"):
        idx.add(gallery.astype(np.float32), ids)
    with pytest.raises(DataError, match=r"must be \(n, 8\) codes of 64 bits packed"):
        idx.add(gallery[:, :4], ids)
    assert len(idx) == 0
    idx.close()
