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

With --clustering it times instead the k-means behind NMI/AMI/F1 (issue 11) against
scikit-learn's KMeans, on synthetic embeddings that look like a trained model's (unit rows,
overlapping classes of uneven size, see make_cluster_data), each case in its own subprocess:

* cub: 6,000 x 128, 100 classes; ours (default restarts: 20), scikit-learn n_init=10 and 1,
  and the faiss k-means used before; 5 k-means seeds each (the best of 10 runs still
  varies by ~0.01 NMI between seeds here, so one seed would compare luck)
* sop: 60,000 x 128, 11,300 classes (most of 2-12 rows); ours (default: 1 run) and with 3
  restarts, scikit-learn n_init=1 (n_init=10 would take ~45 min here), faiss before; 1 seed

Bar: ours faster than scikit-learn at the n_init that matches its quality, NMI as good.

    .venv/bin/python bench/evaluation.py --clustering [--sizes cub,sop]
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
# clustering: size -> (n, dim, classes, noise, k-means seeds, cases as "method[:n_init]")
CLUSTER_SIZES = {
    "cub": (6_000, 128, 100, 2.25, 5, ("ours", "sklearn:10", "sklearn:1", "faiss_before")),
    "sop": (60_000, 128, 11_300, 1.4, 1, ("ours", "ours:3", "sklearn:1", "faiss_before")),
}


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


def make_cluster_data(
    n: int, dim: int, classes: int, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit float32 rows around one Gaussian centre per class, with overlap.

    Class sizes: 2 + a lognormal share of the rest (at SOP size: median 5, 90% <= 8, max
    ~24). ``noise`` is the per-coordinate spread relative to the centres' (1.4 at SOP size
    gives a nearest neighbour of the same class for ~75% of rows and NMI ~0.91, 2.25 at CUB
    size ~67% and ~0.89: in the range of trained models on those sets).
    """
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 0.5, size=classes)
    sizes = np.floor(weights / weights.sum() * (n - 2 * classes) + 2).astype(int)
    labels = np.repeat(np.arange(classes), sizes)
    labels = rng.permutation(np.concatenate([labels, rng.integers(0, classes, n - len(labels))]))
    centres = rng.standard_normal((classes, dim), dtype=np.float32)
    x = centres[labels] + noise * rng.standard_normal((n, dim), dtype=np.float32)
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


def cluster_worker(size: str, case: str, seed: int) -> dict:
    """Cluster one data set with one method in this process; time, NMI, inertia, memory."""
    import faiss
    import torch

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from deepembed.evaluation.clustering import kmeans

    n, dim, classes, noise, _, _ = CLUSTER_SIZES[size]
    x, labels = make_cluster_data(n, dim, classes, noise)
    method, _, n_init = case.partition(":")
    before = rss_mb()
    start = time.perf_counter()
    if method == "ours":  # what clustering_scores runs
        result = kmeans(x, classes, seed=seed, n_init=int(n_init) if n_init else None)
        clusters, extra = result.labels, {"n_init": result.n_init, "n_iter": result.n_iter}
    elif method == "sklearn":
        fitted = KMeans(classes, n_init=int(n_init), random_state=seed).fit(x)
        clusters, extra = fitted.labels_, {"n_init": int(n_init), "n_iter": int(fitted.n_iter_)}
    else:  # faiss_before: the k-means NMI used before issue 11 (one run, 20 iterations)
        km = faiss.Kmeans(
            dim,
            classes,
            niter=20,
            nredo=1,
            seed=seed,
            init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
            min_points_per_centroid=1,
            max_points_per_centroid=1 << 30,
        )
        km.train(x)
        clusters, extra = km.index.search(x, 1)[1][:, 0], {"n_init": 1, "n_iter": 20}
    seconds = time.perf_counter() - start
    centres = np.zeros((classes, dim))
    np.add.at(centres, clusters, x)
    centres /= np.maximum(np.bincount(clusters, minlength=classes), 1)[:, None]
    inertia = float(((x - centres[clusters]) ** 2).sum())  # of the final clusters' means
    nmi = float(normalized_mutual_info_score(labels, clusters))
    out = {"seconds": seconds, "nmi": nmi, "inertia": inertia, "rss_before_mb": before}
    return {**out, **extra, "peak_rss_mb": rss_mb()}


def run_clustering(sizes: list[str]) -> None:
    """Every clustering case of each size and seed in its own subprocess; table + ratios."""
    for size in sizes:
        n, dim, classes, noise, seeds, cases = CLUSTER_SIZES[size]
        print(f"\n{size}: n={n} dim={dim} classes={classes} noise={noise} seeds={seeds}")
        summary = {}
        for case in cases:
            runs = []
            for seed in range(seeds):
                cmd = [sys.executable, __file__, "--cluster-worker", size, case, str(seed)]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            nmis = [run["nmi"] for run in runs]
            summary[case] = r = {
                "seconds": float(np.mean([run["seconds"] for run in runs])),
                "nmi": float(np.mean(nmis)),
                "nmi_min": min(nmis),
                "nmi_max": max(nmis),
                "inertia": float(np.mean([run["inertia"] for run in runs])),
                "n_init": runs[0]["n_init"],
                "n_iter": [run["n_iter"] for run in runs],
                "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
            }
            print(
                f"{case:13s} n_init {r['n_init']:2d}  {r['seconds']:8.2f} s  NMI {r['nmi']:.4f} "
                f"[{r['nmi_min']:.4f}, {r['nmi_max']:.4f}]  inertia {r['inertia']:10.1f}  "
                f"peak RSS {r['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
        print(json.dumps(summary, indent=2))
        ours = summary["ours"]
        for case in (c for c in cases if c.startswith("sklearn")):
            sk = summary[case]
            print(
                f"{size}: {case} / ours time {sk['seconds'] / ours['seconds']:.2f}x, "
                f"NMI ours - {case} {ours['nmi'] - sk['nmi']:+.4f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=6_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--worker", choices=CASES + EXTRA_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--clustering", action="store_true", help="the k-means comparison")
    parser.add_argument("--sizes", default=",".join(CLUSTER_SIZES), help="with --clustering")
    parser.add_argument("--cluster-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cluster_worker:
        size, case, seed = args.cluster_worker
        print(json.dumps(cluster_worker(size, case, int(seed))))
        return
    if args.clustering:
        run_clustering(args.sizes.split(","))
        return
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
