"""milvus-lite through the Index protocol (issue 15): add, search and remove 100,000 vectors.

Data: --n clustered unit float vectors (default 100,000 x 128; bench/index.py's generator:
Gaussian centres plus a 16-d latent spread and small noise, seeded) and --queries held-out
queries from the same distribution; metric cosine. Exact ground truth by numpy (inner
products of unit vectors, in chunks). For each spec (FLAT, HNSW with M 16 and 32):

* `index.create(dim, "cosine", spec, uri=<tmp>/bench.db#name)`, then `add` in chunks of
  --chunk items (vectors/s over the whole gallery), then `save()` (a flush: milvus-lite
  builds the segment's index; timed separately);
* search all queries in one call, k=10, for each ef (queries/s, recall@10);
* on the FLAT collection: remove --remove ids (timed), then check `len`, that searching with
  the removed vectors themselves returns none of them, and that `get` refuses them.

    .venv/bin/python bench/index_milvus.py [--n 100000] [--dim 128] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: bench.*
from bench.index import clustered

from deepembed import index
from deepembed.errors import DataError

K = 10
SPECS = [
    ("FLAT", [{}]),
    ("HNSW:M=16,efConstruction=200", [{"ef": 32}, {"ef": 64}, {"ef": 128}]),
    ("HNSW:M=32,efConstruction=200", [{"ef": 32}, {"ef": 64}, {"ef": 128}]),
]


def exact(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) positions of the k largest inner products (unit vectors: cosine), by numpy."""
    out = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), 100):
        sims = queries[lo : lo + 100] @ gallery.T  # (100, n)
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        out[lo : lo + 100] = np.take_along_axis(top, order, 1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--remove", type=int, default=10_000)
    args = parser.parse_args()

    centres = np.random.default_rng(7).normal(size=(1_000, args.dim)) / np.sqrt(args.dim)
    gallery = clustered(args.n, args.dim, 0, centres)
    queries = clustered(args.queries, args.dim, 1, centres)
    ids = np.random.default_rng(0).permutation(10 * args.n)[: args.n]  # arbitrary ids
    truth = ids[exact(gallery, queries, K)]
    load = os.getloadavg()
    print(
        f"milvus-lite, {args.n:,} x {args.dim} clustered unit vectors, cosine, "
        f"{args.queries:,} queries, k={K}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    rows = []
    removal = ""
    with tempfile.TemporaryDirectory() as tmp:
        for n, (spec, settings) in enumerate(SPECS):
            idx = index.create(args.dim, "cosine", spec, uri=f"{tmp}/bench.db#c{n}")
            start = time.perf_counter()
            for lo in range(0, args.n, args.chunk):
                rows_ = slice(lo, lo + args.chunk)
                idx.add(gallery[rows_], ids[rows_], labels=ids[rows_] % 100)
            added = time.perf_counter() - start
            start = time.perf_counter()
            idx.save()
            flushed = time.perf_counter() - start
            for params in settings:
                idx.search(queries[:10], K, params=params)  # warm
                start = time.perf_counter()
                _, found = idx.search(queries, K, params=params)
                took = time.perf_counter() - start
                rows.append(
                    f"| {spec} | {params.get('ef', '-')} | {args.n / added:,.0f} | "
                    f"{flushed:.1f} | {args.queries / took:,.0f} | {recall(found, truth):.4f} |"
                )
                print(rows[-1], flush=True)
            if spec == "FLAT":
                removal = check_removal(idx, gallery, ids, args.remove)
            idx.close()
        # stop milvus-lite's server for the file now: at exit it would write into the
        # removed temporary directory again
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(f"{tmp}/bench.db")
    print()
    print("| spec | ef | add (vectors/s) | save / flush (s) | search (queries/s) | recall@10 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print(removal)
    load = os.getloadavg()
    print(f"load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def check_removal(idx: index.Index, gallery: np.ndarray, ids: np.ndarray, count: int) -> str:
    """Remove `count` ids; their own vectors must not find them; len and get agree."""
    picked = np.random.default_rng(1).choice(len(ids), count, replace=False)
    start = time.perf_counter()
    idx.remove(ids[picked])
    took = time.perf_counter() - start
    assert len(idx) == len(ids) - count, (len(idx), len(ids) - count)
    _, found = idx.search(gallery[picked], K)
    leaked = int(np.isin(found, ids[picked]).sum())
    assert leaked == 0, f"{leaked} removed ids still found"
    try:
        idx.get(ids[picked[:1]])
        raise AssertionError("get() returned a removed item")
    except DataError:
        pass
    return (
        f"removed {count:,} ids in {took:.2f} s ({count / took:,.0f} ids/s); len {len(idx):,}; "
        f"searching with the {count:,} removed vectors (k={K}) found none of them; get refuses them"
    )


if __name__ == "__main__":
    main()
