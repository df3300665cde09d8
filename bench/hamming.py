"""Hamming search speed (issue 14): our popcount kernels against faiss IndexBinaryFlat.

Synthetic clustered codes: one random centre per class, each item its class centre with every
bit flipped with a per-item probability drawn uniformly in [0, 0.3] (tight and loose items
alike, so distances spread and tie as trained hash codes do). Everyone runs on the same
threads (--threads, default torch's; numba's and faiss's OpenMP set to it), inputs warm
(kernels loaded, faiss called once). Each timing is the best of --repeats runs, ours and the
peer alternating, with the median beside it. Measured in one run:

1. Leave-one-out evaluation of 60,000 x 64-bit codes (100 classes):
   * ours: evaluate(codes, labels, metrics=("map", "map_hash@1000", "hamming_precision@2"),
     distance="hamming"): the hashing literature's metrics (mAP over the whole database,
     DeepHash-pytorch's mAP@1000, precision within Hamming radius 2), tie-aware, from
     packed codes to the metric dict;
   * faiss: IndexBinaryFlat(64).search(codes, 1001) (k = 1000 plus the query itself): the
     top-1000 search alone, no metric and nothing of the ranking beyond the top 1000, so a
     peer doing strictly less than ours (index built beforehand, not timed);
   * plain: our torch path without the kernels (+-1 floats, whole distance rows), the
     evaluation before them, at --plain-n rows where it takes seconds; ours at that size
     too, and whether the metric values are the same.
2. 1,000 queries x 1,000,000 64-bit codes, k = 10:
   * ours: knn_search(q, g, 10, distance="hamming"), exact, ties by lower index;
   * faiss: IndexBinaryFlat(64).search(q, 10) (built beforehand);
   * index BFlat: deepembed.index.create(64, "hamming", "BFlat").search(q, 10) (faiss
     underneath, codes added beforehand);
   and whether the lists agree with faiss's.
3. 48-bit codes (6 bytes, a length faiss has no specialised kernel for), the search of 2:
   faiss IndexBinaryFlat(48) on the 6-byte codes against IndexBinaryFlat(64) on the codes
   zero-padded to 8 bytes (the same distances), and ours on the 6-byte codes, which it packs
   into one zero-padded 64-bit word: the path of 64-bit codes.

Bar (issue 14): ours at least as fast as faiss in 1 and 2 (faiss / ours >= 1).

    .venv/bin/python bench/hamming.py [--n 60000] [--queries 1000] [--gallery 1000000]
        [--repeats 3] [--plain-n 5000] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import torch

from deepembed import index
from deepembed.evaluation import _hamming, evaluate, knn, knn_search

METRICS = ("map", "map_hash@1000", "hamming_precision@2")


def make_codes(n: int, bits: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, bits / 8) packed uint8 codes around one random centre per class, and the labels."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, size=(classes, bits)).astype(bool)
    labels = rng.integers(0, classes, n)
    flip = rng.uniform(0.0, 0.3, size=(n, 1))  # per-item spread: tight and loose items
    bits_ = centres[labels] ^ (rng.random((n, bits)) < flip)
    return np.packbits(bits_, axis=1), labels


def timed(runs: dict[str, list[float]], name: str, fn: Callable[[], Any]) -> Any:
    """fn(), its wall time appended to runs[name]."""
    start = time.perf_counter()
    out = fn()
    runs.setdefault(name, []).append(time.perf_counter() - start)
    return out


def report(title: str, runs: dict[str, list[float]], ours: str, peers: list[str]) -> None:
    print(f"\n{title}")
    for name, times in runs.items():
        print(f"  {name:<28} best {min(times):8.3f} s   median {statistics.median(times):8.3f} s")
    for peer in peers:
        ratio = min(runs[peer]) / min(runs[ours])
        print(f"  {peer} / {ours}: {ratio:.2f}x ({'ours faster' if ratio >= 1 else 'ours slower'})")


def loo_case(n: int, plain_n: int, repeats: int) -> None:
    codes, labels = make_codes(n, 64, 100, seed=0)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    evaluate(codes[:2000], labels[:2000], metrics=METRICS, distance="hamming")  # warm
    flat.search(codes[:100], 1001)
    runs: dict[str, list[float]] = {}
    ours_name = f"ours evaluate n={n}"
    result = {}
    for _ in range(repeats):
        result = timed(
            runs, ours_name, lambda: evaluate(codes, labels, metrics=METRICS, distance="hamming")
        )
        timed(runs, "faiss search k=1001", lambda: flat.search(codes, 1001))
    print(f"  metrics n={n}: " + ", ".join(f"{m} {result[m]:.4f}" for m in METRICS))
    peers = ["faiss search k=1001"]
    if plain_n:
        small, small_labels = codes[:plain_n], labels[:plain_n]
        fast = slow = {}
        for _ in range(repeats):
            fast = timed(
                runs,
                f"ours evaluate n={plain_n}",
                lambda: evaluate(small, small_labels, metrics=METRICS, distance="hamming"),
            )
            knn._HAMMING_KERNELS = False
            try:
                slow = timed(
                    runs,
                    f"plain evaluate n={plain_n}",
                    lambda: evaluate(small, small_labels, metrics=METRICS, distance="hamming"),
                )
            finally:
                knn._HAMMING_KERNELS = True
        same = all(abs(fast[m] - slow[m]) <= 1e-12 for m in METRICS)
        print(f"  n={plain_n}: kernels and plain path give the same metrics: {same}")
    report(f"1. leave-one-out evaluation, {n} x 64-bit codes ({', '.join(METRICS)})", runs,
           ours_name, peers)  # fmt: skip
    if plain_n:
        ratio = min(runs[f"plain evaluate n={plain_n}"]) / min(runs[f"ours evaluate n={plain_n}"])
        print(f"  plain / ours at n={plain_n}: {ratio:.1f}x")


def search_case(n_query: int, n_gallery: int, repeats: int) -> None:
    gallery, _ = make_codes(n_gallery, 64, 100, seed=1)
    query, _ = make_codes(n_query, 64, 100, seed=2)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(gallery)
    bflat = index.create(64, "hamming", "BFlat")
    bflat.add(gallery, np.arange(n_gallery))
    knn_search(query[:10], gallery, 10, distance="hamming")  # warm
    flat.search(query[:10], 10)
    bflat.search(query[:10], 10)
    runs: dict[str, list[float]] = {}
    ours = theirs = None
    for _ in range(repeats):
        ours = timed(
            runs, "ours knn_search", lambda: knn_search(query, gallery, 10, distance="hamming")
        )
        theirs = timed(runs, "faiss IndexBinaryFlat", lambda: flat.search(query, 10))
        timed(runs, "index BFlat (faiss)", lambda: bflat.search(query, 10))
    report(
        f"2. {n_query} queries x {n_gallery} 64-bit codes, k=10",
        runs,
        "ours knn_search",
        ["faiss IndexBinaryFlat", "index BFlat (faiss)"],
    )
    same_d = bool((ours.distances == theirs[0]).all())
    same_i = float((ours.indices == theirs[1]).mean())
    print(f"  distances equal to faiss's: {same_d}; same indices: {same_i:.4%}")

    # 3. the same search on 48-bit codes
    g6, q6 = np.ascontiguousarray(gallery[:, :6]), np.ascontiguousarray(query[:, :6])
    flat48 = faiss.IndexBinaryFlat(48)
    flat48.add(g6)
    flat64 = faiss.IndexBinaryFlat(64)
    flat64.add(np.pad(g6, ((0, 0), (0, 2))))
    q6_padded = np.pad(q6, ((0, 0), (0, 2)))
    flat48.search(q6[:10], 10)
    words = _hamming.code_words(g6, 48)
    runs = {}
    for _ in range(repeats):
        ours48 = timed(
            runs, "ours knn_search, 48 bits", lambda: knn_search(q6, g6, 10, distance="hamming")
        )
        slow = timed(runs, "faiss 6-byte codes", lambda: flat48.search(q6, 10))
        fast = timed(runs, "faiss padded to 8 bytes", lambda: flat64.search(q6_padded, 10))
    report(
        f"3. {n_query} queries x {n_gallery} 48-bit codes, k=10",
        runs,
        "ours knn_search, 48 bits",
        ["faiss 6-byte codes", "faiss padded to 8 bytes"],
    )
    ratio = min(runs["faiss 6-byte codes"]) / min(runs["faiss padded to 8 bytes"])
    print(f"  faiss 6-byte / 8-byte padded: {ratio:.2f}x")
    print(
        f"  ours packs 48-bit codes as {words.dtype} words of shape {words.shape} (one word a "
        "code, 16 zero bits: the 64-bit path)"
    )
    same = (slow[0] == fast[0]).all() and (ours48.distances == fast[0]).all()
    print(f"  distances equal (faiss 6-byte, faiss padded, ours): {bool(same)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=60_000, help="leave-one-out codes")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-n", type=int, default=5_000, help="0: skip the plain path")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's thread count")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    print(
        f"threads {threads} (torch {torch.get_num_threads()}, faiss "
        f"{faiss.omp_get_max_threads()}, numba follows torch); {os.cpu_count()} CPUs; "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    loo_case(args.n, args.plain_n, args.repeats)
    search_case(args.queries, args.gallery, args.repeats)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
