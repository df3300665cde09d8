"""Evaluation speed and memory at the size of the SOP test set, against PML and raw faiss.

Synthetic clustered float32 data (default 60,000 x 128, ~6,000 classes of uneven size, SOP-
like) in the leave-one-out protocol. Measured in one run, each in its own subprocess so that
its peak resident memory (getrusage ru_maxrss: the whole process, data and libraries
included) is its own:

* ours: evaluate(recall@1, r_precision, map@r), backend auto (torch) and faiss
* PML 2.9 AccuracyCalculator(precision_at_1, r_precision, mean_average_precision_at_r,
  k="max_bin_count"), ref_includes_query=True
* raw faiss IndexFlatIP search with the k that ours searches (k = max R, plus 1 for the
  query itself, as PML and a raw leave-one-out search need)
* ours: evaluate(recall@1/10/100/1000)
* ours_qg_torch / ours_qg_faiss: a separate gallery (first 53% of the rows query the rest,
  In-Shop's proportions: run with --n 26830 for its 14,218 x 12,612), each backend; not in
  the default cases

Bars (issue 5): ours >= 2x faster than PML, <= 1.2x the raw faiss search, peak < 2 GB.

    .venv/bin/python bench/evaluation.py [--n 60000] [--dim 128] [--classes 6000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

CASES = ("ours", "ours_faiss", "pml", "faiss_raw", "ours_recall_curve")
EXTRA_CASES = ("ours_qg_torch", "ours_qg_faiss")


def make_data(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit float32 rows around one centre per class; class sizes uneven (>= 2)."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 0.6, size=classes)  # uneven class sizes, SOP-like spread
    sizes = np.maximum(2, np.round(weights / weights.sum() * n)).astype(int)
    labels = np.repeat(np.arange(classes), sizes)[:n]
    labels = rng.permutation(np.concatenate([labels, rng.integers(0, classes, n - len(labels))]))
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = centres[labels] + 0.9 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels.astype(np.int64)


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(case: str, args: argparse.Namespace) -> dict:
    """Run one measurement in this process; return wall time, memory and values."""
    import faiss
    import torch

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    from deepembed.evaluation import evaluate

    x, labels = make_data(args.n, args.dim, args.classes)
    max_r = int(np.bincount(labels).max()) - 1
    before = rss_mb()
    start = time.perf_counter()
    if case in ("ours", "ours_faiss"):
        backend = "faiss" if case == "ours_faiss" else "auto"
        out = evaluate(x, labels, metrics=("recall@1", "r_precision", "map@r"), backend=backend)
        values = {k: out[k] for k in ("recall@1", "r_precision", "map@r", "k")}
    elif case == "ours_recall_curve":
        names = ("recall@1", "recall@10", "recall@100", "recall@1000")
        out = evaluate(x, labels, metrics=names)
        values = {k: out[k] for k in (*names, "k")}
    elif case in EXTRA_CASES:
        nq = int(0.53 * len(x))
        names = ("recall@1", "recall@10", "recall@50", "map@r")
        out = evaluate(
            x[:nq], labels[:nq], x[nq:], labels[nq:], metrics=names, backend=case.split("_")[-1]
        )
        values = {k: out[k] for k in (*names, "k")}
    elif case == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )
        xt, lt = torch.from_numpy(x), torch.from_numpy(labels)
        out = calc.get_accuracy(xt, lt, xt, lt, ref_includes_query=True)
        values = {k: float(v) for k, v in out.items()}
    else:  # faiss_raw: the same k ours searches, plus the query itself
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
        index.search(x, max_r + 1)
        values = {"k": max_r + 1}
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_mb": rss_mb(), "rss_before_mb": before, **values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=6_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--worker", choices=CASES + EXTRA_CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    sizes = ["--n", str(args.n), "--dim", str(args.dim), "--classes", str(args.classes)]
    results = {}
    for case in args.cases.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", case, *sizes],
            capture_output=True,
            text=True,
            check=True,
        )
        results[case] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[case]
        print(f"{case:18s} {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    print(f"\nn={args.n} dim={args.dim} classes={args.classes}")
    print(json.dumps(results, indent=2))
    if {"ours", "pml", "faiss_raw"} <= results.keys():
        ours = results["ours"]["seconds"]
        print(f"PML / ours:       {results['pml']['seconds'] / ours:.2f}x  (bar >= 2)")
        print(f"ours / raw faiss: {ours / results['faiss_raw']['seconds']:.2f}x  (bar <= 1.2)")
        peak = max(r["peak_rss_mb"] for k, r in results.items() if k.startswith("ours"))
        print(f"peak RSS of ours: {peak:.0f} MB  (bar < 2048)")


if __name__ == "__main__":
    main()
