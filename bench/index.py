"""Index speed and recall (issue 15): deepembed.index against raw faiss, same parameters, one run.

Data: --n clustered float vectors (default 1,000,000 x 128: 1,000 Gaussian centres with
a 16-d latent spread each) and --queries held-out queries from the same distribution, cosine
(unit vectors, inner product: how deepembed stores embeddings). Exact ground truth by a flat
inner-product search. For each float spec (Flat, IVF4096,Flat, IVF4096,PQ32,RFlat, HNSW32,
OPQ32,IVF4096,PQ32,RFlat):

* ours: `index.create(dim, "cosine", spec, uri=<a directory>)`: train on --train vectors,
  add the gallery (committed to the SQLite catalogue on disk, as every durable index is),
  `index tune` to recall@10 >= --target on 500 held-out queries (not those measured), then
  search with the tuned parameters;
* faiss: `faiss.index_factory(dim, spec, METRIC_INNER_PRODUCT)` on the same unit vectors
  (normalised as ours normalises them, bit for bit, and added in the same chunks, so that
  both build the same structure), trained on the same sample, the same search parameters
  (SearchParameters objects), called as its users call it: `index.search(x, k, params=)`;
  queries normalised beforehand (ours normalises and checks each query inside the call);
* reported: build time (train + add), recall@10 of the held-out queries, queries/s batched
  (all queries in one call) and one query at a time (--single queries), bytes per vector
  of the faiss structure (its serialised size; ours also keeps each raw vector in the
  catalogue on disk), and ours / faiss queries/s (bar: >= 0.9).

Binary: --binary-n 64-bit codes (the sign of 64 random projections of clustered vectors),
BFlat and BIVF1024, ours against faiss's IndexBinaryFlat / index_binary_factory.
Hamming distances tie, so recall@10 counts results within the 10th exact distance.

Filtered: on the IVF and HNSW indexes built above, items carry one of 100 labels; filters
keeping 50%, 10% and 1% of the gallery; recall@10 against exact search over the subset.

    .venv/bin/python bench/index.py [--n 1000000] [--dim 128] [--queries 1000]
        [--specs Flat ...] [--binary-n 1000000] [--skip-binary] [--skip-filters]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from deepembed import index
from deepembed.index import checks
from deepembed.index import faiss_parts as fp
from deepembed.index.specs import parse_spec
from deepembed.index.tune import tune

SPECS = ("Flat", "IVF4096,Flat", "IVF4096,PQ32,RFlat", "HNSW32", "OPQ32,IVF4096,PQ32,RFlat")
K = 10


def clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    """(n, dim) unit float32 vectors: a random centre, plus a 16-d latent offset through a
    shared basis (embeddings have a low intrinsic dimension), plus small isotropic noise."""
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(16, dim)) / 4.5  # the same for every call
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries
        m = min(100_000, n - start)
        rows = centres[rng.integers(0, len(centres), m)] + rng.normal(size=(m, 16)) @ basis
        rows += rng.normal(scale=0.1, size=(m, dim))
        out[start : start + m] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def exact(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(q, k) ids (positions) of the exact nearest by inner product."""
    flat = faiss.IndexFlatIP(gallery.shape[1])
    flat.add(gallery)
    return fp.faiss_search(flat, queries, k)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def rates(
    ours: Callable[[np.ndarray], Any],
    raw: Callable[[np.ndarray], Any],
    queries: np.ndarray,
    single: int,
) -> tuple[float, float, float, float]:
    """Queries/s of ours and faiss, batched (all queries in one call, best of 3) and one query
    at a time (`single` queries, best of 2 passes), the two alternating at every call so
    that load from other processes falls on both alike:
    (ours batched, faiss batched, ours one at a time, faiss one at a time)."""
    best = {"ours": np.inf, "raw": np.inf, "ours1": np.inf, "raw1": np.inf}
    for _ in range(3):
        for name, fn in (("raw", raw), ("ours", ours)):
            start = time.perf_counter()
            fn(queries)
            best[name] = min(best[name], time.perf_counter() - start)
    for _ in range(2):
        spent = {"ours1": 0.0, "raw1": 0.0}
        for row in queries[:single]:
            for name, fn in (("raw1", raw), ("ours1", ours)):
                start = time.perf_counter()
                fn(row[None])
                spent[name] += time.perf_counter() - start
        best = {**best, **{n: min(best[n], t) for n, t in spent.items()}}
    q = len(queries)
    return q / best["ours"], q / best["raw"], single / best["ours1"], single / best["raw1"]


def raw_factory(spec: str, dim: int) -> Any:
    """faiss's own index for `spec` (inner product), polysemous training off as ours."""
    raw = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if parse_spec(spec).pq_m:
        faiss.downcast_index(faiss.extract_index_ivf(raw)).do_polysemous_training = False
    return raw


def float_row(
    spec: str,
    gallery: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    tuning: np.ndarray,
    args: Any,
    tmp: Path,
) -> tuple[dict[str, Any], Any]:
    """Build, tune and time ours and faiss's index of `spec`; (row, our index)."""
    parsed = parse_spec(spec)
    sample = gallery[: args.train] if parsed.needs_training else gallery[:0]
    ids = np.arange(len(gallery), dtype=np.int64)
    start = time.perf_counter()
    ours = index.create(gallery.shape[1], "cosine", spec, uri=tmp / spec.replace(",", "_"))
    if parsed.needs_training:
        ours.train(sample)
    for at in range(0, len(gallery), 200_000):
        ours.add(
            gallery[at : at + 200_000], ids[at : at + 200_000], labels=ids[at:][:200_000] % 100
        )
    ours_build = time.perf_counter() - start
    tuned = tune(ours, recall=args.target, k=K, queries=tuning)
    params = ours.params
    print(
        f"  {spec}: tuned {params} (sample recall "
        f"{tuned.best.recall if tuned.best else float('nan'):.4f})",
        flush=True,
    )

    start = time.perf_counter()
    raw = raw_factory(parsed.text, gallery.shape[1])
    if parsed.needs_training:
        raw.train(checks.prepare_floats(sample, "cosine"))
    for at in range(0, len(gallery), 200_000):  # the same vectors, in the same chunks as ours
        raw.add(checks.prepare_floats(gallery[at : at + 200_000], "cosine"))
    raw_build = time.perf_counter() - start
    raw_params = fp.search_params(parsed, params)

    def ours_search(x: np.ndarray) -> np.ndarray:
        return ours.search(x, K)[1]

    def raw_search(x: np.ndarray) -> np.ndarray:
        return raw.search(x, K, params=raw_params)[1]  # faiss's public call

    single = args.single_flat if parsed.family == "flat" else args.single

    def raw_blas(x: np.ndarray) -> np.ndarray:
        with fp.blas_rule(gallery.shape[1]):  # raw faiss with the same BLAS rule as ours
            return raw_search(x)

    ours_batch, raw_batch, ours_one, raw_one = rates(ours_search, raw_blas, queries, single)
    row = {
        "spec": parsed.text,
        "params": params,
        "tune_recall": tuned.best.recall if tuned.best else None,
        "recall": recall(ours_search(queries), truth),
        "raw_recall": recall(raw_search(queries), truth),
        "build": ours_build,
        "raw_build": raw_build,
        "qps": ours_batch,
        "raw_qps": raw_batch,
        "qps1": ours_one,
        "raw_qps1": raw_one,
        "bytes": ours.info()["memory_bytes"] / len(gallery),
        "raw_bytes": fp.memory_bytes(raw, False) / len(gallery),
    }
    return row, ours


def print_float(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| spec | search params | recall@10 ours / faiss | q/s batched ours / faiss (ratio) "
        "| q/s one query ours / faiss (ratio) | build s ours / faiss | bytes/vector ours / faiss "
        "| tune recall (its queries) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['spec']} | {r['params'] or '-'} | {r['recall']:.4f} / {r['raw_recall']:.4f} "
            f"| {r['qps']:,.0f} / {r['raw_qps']:,.0f} ({r['qps'] / r['raw_qps']:.2f}) "
            f"| {r['qps1']:,.0f} / {r['raw_qps1']:,.0f} ({r['qps1'] / r['raw_qps1']:.2f}) "
            f"| {r['build']:.1f} / {r['raw_build']:.1f} | {r['bytes']:.1f} / {r['raw_bytes']:.1f} "
            f"| {r['tune_recall'] if r['tune_recall'] is None else round(r['tune_recall'], 4)} |"
        )


def filtered(built: dict[str, Any], gallery: np.ndarray, queries: np.ndarray) -> None:
    """recall@10 and q/s of filtered searches keeping 50/10/1% of the gallery (label % 100)."""
    labels = np.arange(len(gallery)) % 100
    print("\n| spec | filter keeps | recall@10 | q/s batched |")
    print("|---|---:|---:|---:|")
    for spec, idx in built.items():
        for share in (50, 10, 1):
            keep = list(range(share))
            subset = np.flatnonzero(labels < share)
            truth = subset[exact(gallery[subset], queries, K)]
            start = time.perf_counter()
            found = idx.search(queries, K, filters={"label": keep})[1]
            qps = len(queries) / (time.perf_counter() - start)
            print(f"| {spec} | {share}% | {recall(found, truth):.4f} | {qps:,.0f} |", flush=True)


def binary(args: Any, tmp: Path) -> None:
    """BFlat and BIVF on 64-bit codes: ours against faiss, recall counted by distance."""
    dim = 32
    centres = np.random.default_rng(10).normal(size=(1000, dim)).astype(np.float32)
    planes = np.random.default_rng(11).normal(size=(dim, 64)).astype(np.float32)

    def codes(n: int, seed: int) -> np.ndarray:
        return np.packbits(clustered(n, dim, seed, centres) @ planes > 0, axis=1)

    gallery, queries = codes(args.binary_n, 12), codes(args.queries, 13)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(gallery)
    true_d = flat.search(queries, K)[0][:, -1:]  # the 10th exact distance per query
    ids = np.arange(len(gallery), dtype=np.int64)
    print(
        "\n| spec | params | recall@10 (by distance) ours / faiss | q/s batched ours / faiss "
        "(ratio) | q/s one query ours / faiss (ratio) | build s ours / faiss |"
    )
    print("|---|---|---|---|---|---|")
    for spec in ("BFlat", f"BIVF{args.binary_nlist}"):
        parsed = parse_spec(spec)
        start = time.perf_counter()
        ours = index.create(64, "hamming", spec, uri=tmp / spec)
        if parsed.needs_training:
            ours.train(gallery[: args.train])
        for at in range(0, len(gallery), 200_000):
            ours.add(gallery[at : at + 200_000], ids[at : at + 200_000])
        ours_build = time.perf_counter() - start
        if parsed.needs_training:
            ours.set_params(nprobe=args.binary_nprobe)
        start = time.perf_counter()
        raw = faiss.index_binary_factory(64, spec)
        if parsed.needs_training:
            raw.train(gallery[: args.train])
        raw.add(gallery)
        raw_build = time.perf_counter() - start
        raw_params = fp.search_params(parsed, ours.params)

        def ours_search(x: np.ndarray, ours: Any = ours) -> np.ndarray:
            return ours.search(x, K)[0]

        def raw_search(x: np.ndarray, raw: Any = raw, p: Any = raw_params) -> np.ndarray:
            return raw.search(x, K, params=p)[0]  # faiss's public call, as its users write it

        ours_b, raw_b, ours_1, raw_1 = rates(ours_search, raw_search, queries, args.single)
        rec = float(np.mean(ours_search(queries) <= true_d))
        raw_rec = float(np.mean(raw_search(queries) <= true_d))
        print(
            f"| {spec} | {ours.params or '-'} | {rec:.4f} / {raw_rec:.4f} "
            f"| {ours_b:,.0f} / {raw_b:,.0f} ({ours_b / raw_b:.2f}) "
            f"| {ours_1:,.0f} / {raw_1:,.0f} ({ours_1 / raw_1:.2f}) "
            f"| {ours_build:.1f} / {raw_build:.1f} |",
            flush=True,
        )
        ours.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=300, help="one-at-a-time queries")
    parser.add_argument("--single-flat", type=int, default=30, help="the same for Flat / BFlat")
    parser.add_argument("--train", type=int, default=200_000, help="training vectors")
    parser.add_argument("--target", type=float, default=0.95, help="index tune's recall@10")
    parser.add_argument("--specs", nargs="+", default=list(SPECS))
    parser.add_argument("--binary-n", type=int, default=1_000_000)
    parser.add_argument("--binary-nlist", type=int, default=1024)
    parser.add_argument("--binary-nprobe", type=int, default=16)
    parser.add_argument("--skip-float", action="store_true")
    parser.add_argument("--skip-binary", action="store_true")
    parser.add_argument("--skip-filters", action="store_true")
    args = parser.parse_args()
    print(
        f"# {platform.node()}, {os.cpu_count()} cores, faiss {faiss.__version__}, "
        f"{faiss.omp_get_max_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if not args.skip_float:
            centres = np.random.default_rng(0).normal(size=(1000, args.dim)).astype(np.float32)
            gallery = clustered(args.n, args.dim, 1, centres)
            queries = clustered(args.queries, args.dim, 2, centres)
            truth = exact(gallery, queries, K)
            tuning = clustered(500, args.dim, 3, centres)  # index tune's held-out queries
            rows, built = [], {}
            for spec in args.specs:
                row, ours = float_row(spec, gallery, queries, truth, tuning, args, tmp)
                rows.append(row)
                if parse_spec(spec).family in ("ivf_flat", "hnsw") and not args.skip_filters:
                    built[row["spec"]] = ours
                else:
                    ours.close()
            print_float(rows)
            if built:
                filtered(built, gallery, queries)
        if not args.skip_binary:
            binary(args, tmp)


if __name__ == "__main__":
    main()
