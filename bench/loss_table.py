"""Train the demo recipe with each loss (+ miner) at the same budget; print MAP@R / Recall@1.

Every row is `deepembed train configs/mnist30.yaml` with only the loss, the miner and their
parameters changed (same backbone, P x K batches, optimiser, schedule, epochs, seed), run one
after the other in fresh processes. Metrics are on the 15 unseen classes of mnist30.

    .venv/bin/python bench/loss_table.py                 # every row, 4 epochs (~5 min/row)
    .venv/bin/python bench/loss_table.py --only arcface  # one row
    .venv/bin/python bench/loss_table.py --markdown      # the table for docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# label -> overrides of configs/mnist30.yaml (the paper's or PML's defaults unless noted)
ROWS: dict[str, list[str]] = {
    "triplet + batch_hard": [
        "loss.name=triplet",
        "loss.params={margin: 0.2}",
        "miner.name=batch_hard",
    ],
    "triplet + semi_hard": [
        "loss.name=triplet",
        "loss.params={margin: 0.2}",
        "miner.name=semi_hard",
        "miner.params={margin: 0.2}",
    ],
    "triplet (batch-all)": [
        "loss.name=triplet",
        "loss.params={margin: 0.2}",
        "miner.name=",
    ],
    "multi_similarity + ms miner": [
        "loss.name=multi_similarity",
        "loss.params={alpha: 2.0, beta: 50.0, base: 0.5}",
        "miner.name=multi_similarity",
        "miner.params={epsilon: 0.1}",
    ],
    "margin + distance_weighted": [
        "loss.name=margin",
        "loss.params={margin: 0.2, beta: 1.2, learn_beta: true}",
        "miner.name=distance_weighted",
        "miner.params={cutoff: 0.5, nonzero_loss_cutoff: 1.4}",
    ],
    "contrastive": [
        "loss.name=contrastive",
        "loss.params={pos_margin: 0.0, neg_margin: 1.0}",
        "miner.name=",
    ],
    "circle": ["loss.name=circle", "loss.params={m: 0.4, gamma: 80}", "miner.name="],
    "proxy_anchor": ["loss.name=proxy_anchor", "miner.name="],
    "arcface": ["loss.name=arcface", "miner.name="],
    "normalized_softmax": [
        "loss.name=normalized_softmax",
        "miner.name=",
    ],
}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")


def run_row(label: str, overrides: list[str], epochs: int, out: Path) -> dict[str, float | str]:
    """Train one row in a fresh process; return its test metrics and wall time."""
    cmd = [
        str(Path(sys.executable).parent / "deepembed"),
        "train",
        str(ROOT / "configs" / "mnist30.yaml"),
        f"output_dir={out}",
        f"name={slug(label)}",
        f"train.epochs={epochs}",
        "-q",
        *overrides,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        return {"error": tail[0] if tail else f"exit {done.returncode}", "seconds": seconds}
    metrics = json.loads((out / slug(label) / "metrics.json").read_text())
    return {**metrics, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", nargs="*", default=None, help="row labels (substrings)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "loss_table")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = {k: v for k, v in ROWS.items() if args.only is None or any(o in k for o in args.only)}
    print(f"{'loss + miner':32s} {'MAP@R':>7s} {'R@1':>7s} {'NMI':>7s} {'time':>7s}", flush=True)
    results = {}
    for label, overrides in rows.items():
        r = results[label] = run_row(label, overrides, args.epochs, args.out)
        if "error" in r:
            print(f"{label:32s} failed: {r['error']}", flush=True)
            continue
        print(
            f"{label:32s} {r['map@r']:7.4f} {r['recall@1']:7.4f} {r['nmi']:7.4f} "
            f"{r['seconds']:6.0f}s",
            flush=True,
        )
    if args.markdown:
        print("\n| loss + miner | MAP@R | Recall@1 | NMI | train+eval time |")
        print("|---|---:|---:|---:|---:|")
        for label, r in results.items():
            if "error" not in r:
                print(
                    f"| {label} | {r['map@r']:.4f} | {r['recall@1']:.4f} | {r['nmi']:.4f} "
                    f"| {r['seconds']:.0f} s |"
                )


if __name__ == "__main__":
    main()
