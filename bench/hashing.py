"""Deep hashing on mnist30 under the hashing protocol: every method with the same budget,
against the sign of a float metric embedding and unsupervised ITQ, at 16/32/64 bits.

Protocol (configs/hashing.yaml): all 30 classes; per class 100 queries, 500 training and
50 validation images, the rest (131,400 images) the database; Hamming ranking over the
whole database. Every run trains `--epochs` epochs with the recipe of configs/hashing.yaml
(the epoch kept is the best on the validation images) and reports mAP over the whole
database (`map`, tie-aware), mAP@1000 with the hashing literature's denominator
(`map_hash@1000`) and precision within Hamming radius 2 (`hamming_precision@2`, a query
with nothing inside the radius counting 0).

Baselines, per code length K: a float model trained with the demo's loss (circle) and
K-dimensional embeddings under the same protocol and budget, then (a) the sign of its
embeddings, (b) ITQ (faiss's ITQTransform: PCA to K then the learned rotation, fitted on
the training images' embeddings) on the same embeddings.

    .venv/bin/python bench/hashing.py [--bits 16 32 64] [--methods dsh dch ...] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from deepembed.config import load_config
from deepembed.evaluation import evaluate
from deepembed.inference import embed
from deepembed.models.embedder import Embedder
from deepembed.training import train
from deepembed.training.build import adapt_splits, open_splits

METHODS = ("dsh", "dpsh", "hashnet", "dch", "dtsh", "csq", "greedy_hash", "orthohash")
METRICS = ("map", "map_hash@1000", "hamming_precision@2")
OUT = Path("runs/bench_hashing")


def run(name: str, overrides: list[str]) -> dict:
    """Train one configuration; its metrics and wall-clock seconds."""
    config = load_config(
        "configs/hashing.yaml",
        [f"output_dir={OUT}", f"name={name}", f"eval.metrics={list(METRICS)}", *overrides],
    )
    start = time.perf_counter()
    result = train(config, progress=False, overwrite=True)
    seconds = time.perf_counter() - start
    return {k: result.metrics[k] for k in METRICS} | {"seconds": seconds}


def baselines(bits: int, epochs: int) -> dict[str, dict]:
    """Sign and ITQ codes of a float circle-loss model with `bits`-d embeddings."""
    name = f"float{bits}"
    float_metrics = ("map@r",)
    config = load_config(
        "configs/hashing.yaml",
        [
            f"output_dir={OUT}",
            f"name={name}",
            "model.head=embedding",
            f"model.embedding_dim={bits}",
            "loss.name=circle",
            "loss.params={m: 0.4, gamma: 80}",
            "eval.distance=cosine",
            f"eval.metrics={list(float_metrics)}",
            "train.select=map@r",
            f"train.epochs={epochs}",
        ],
    )
    start = time.perf_counter()
    result = train(config, progress=False, overwrite=True)
    seconds = time.perf_counter() - start
    model = Embedder.load(result.model_dir)
    splits = adapt_splits(open_splits(config), model.preprocessing, config, progress=False)
    query = embed(model, splits.query, progress=False)
    database = embed(model, splits.gallery, progress=False)
    train_set = embed(model, splits.train, progress=False)
    out = {}
    sign_q, sign_db = query.vectors >= 0, database.vectors >= 0
    out[f"sign of float ({bits}-d circle)"] = score(sign_q, query.labels, sign_db, database)
    itq = faiss.ITQTransform(bits, bits, True)
    itq.train(np.ascontiguousarray(train_set.vectors, np.float32))
    rot_q = itq.apply(np.ascontiguousarray(query.vectors, np.float32)) >= 0
    rot_db = itq.apply(np.ascontiguousarray(database.vectors, np.float32)) >= 0
    out[f"ITQ on float ({bits}-d circle)"] = score(rot_q, query.labels, rot_db, database)
    for value in out.values():
        value["seconds"] = seconds
    return out


def score(q: np.ndarray, q_labels: np.ndarray, db: np.ndarray, database) -> dict:
    """The hashing metrics of bool codes (Q, K) against (N, K)."""
    result = evaluate(
        np.packbits(q, axis=1),
        q_labels,
        np.packbits(db, axis=1),
        database.labels,
        metrics=METRICS,
        distance="hamming",
    )
    return {k: result[k] for k in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--no-baselines", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for bits in args.bits:
        table = results.setdefault(str(bits), {})
        for method in args.methods:
            table[method] = run(
                f"{method}{bits}",
                [f"loss.name={method}", f"model.bits={bits}", f"train.epochs={args.epochs}"],
            )
            results_path.write_text(json.dumps(results, indent=2))
            print(bits, method, table[method], flush=True)
        if not args.no_baselines:
            table.update(baselines(bits, args.epochs))
            results_path.write_text(json.dumps(results, indent=2))
    print("| bits | method | mAP | mAP@1000 (hashing) | precision r<=2 | training + test |")
    print("|---|---|---|---|---|---|")
    for bits, table in sorted(results.items(), key=lambda kv: int(kv[0])):
        for method, m in table.items():
            print(
                f"| {bits} | {method} | {m['map']:.4f} | {m['map_hash@1000']:.4f} | "
                f"{m['hamming_precision@2']:.4f} | {m['seconds']:.0f} s |"
            )


if __name__ == "__main__":
    main()
