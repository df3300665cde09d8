"""Loss (+ miner) speed and memory: ours against pytorch-metric-learning (PML) and a baseline.

For every loss, alone or with its miner, and its PML counterpart where PML has one, at each
batch size B and embedding dim D: the time of one forward + backward (miner included; the
median of --repeats after --warmup calls) and the peak memory it adds. Inputs: random
L2-normalised float32 embeddings, labels P x K with K = 8 (B / 8 classes), one seed for all.
The baseline is the (B, B) euclidean distance matrix and its backward: the least any pair
loss has to do; for XBM, whose loss compares the batch with itself and its M = 2B memory
rows, the (B, B + M) matrix it needs (the memory rows are constants). Class losses get
num_classes = B / 8 and embedding_size = D.

Memory. torch's CPU tensors come from malloc, invisible to tracemalloc, so each measurement
runs in a fresh subprocess with glibc's MALLOC_MMAP_THRESHOLD_=65536: every large buffer is
then its own mmap, returned to the OS when freed, and the resident set size (RSS) follows
the live tensors. After the warm-up the worker resets the kernel's RSS high-water mark
(writing 5 to /proc/self/clear_refs), notes the RSS, runs one call and reads the high-water
mark (VmHWM) again: the difference is the peak growth of that call, everything it allocates
at once (autograd saved tensors, masks, gradients), in MiB.

Time. The machine is shared and its speed drifts between runs, so the times come from one
more subprocess that builds ours, PML's and the baseline together and interleaves them:
repeat r runs each side once, in an order rotated by r; each side's median is reported.
malloc is switched back to reusing its heap (mallopt) first, as a normal process would. A
watchdog
thread stops a worker whose RSS passes --mem-budget, and --timeout bounds its time; PML
configurations that build (B, B, B) masks (all triplets: triplet, semi-hard mining, margin,
soft-margin triplet) are skipped up front when ~2 B^3 bytes exceed the budget (69e9
elements at B = 4096).

Flags in the last column (the performance bars): "a" batch-all and semi-hard triplet at
B = 1024 are not >= 20x faster than PML or add >= 100 MB; "b" slower than PML; "c" more than
5x the baseline.

    .venv/bin/python bench/losses.py                          # the full table (slow)
    .venv/bin/python bench/losses.py --sizes 256 --dims 128   # a quick check
    .venv/bin/python bench/losses.py --only triplet --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import inspect
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
K = 8  # images per class in every batch


@dataclass(frozen=True)
class Combo:
    """One table row family: our loss (+ miner) and how PML spells the same thing."""

    name: str
    loss: str
    miner: str | None = None
    miner_params: dict[str, Any] = field(default_factory=dict)
    pml_loss: str | None = None  # PML class name in pytorch_metric_learning.losses
    pml_params: dict[str, Any] = field(default_factory=dict)
    pml_miner: str | None = None  # PML class name in pytorch_metric_learning.miners
    pml_miner_params: dict[str, Any] = field(default_factory=dict)
    pml_cubic: bool = False  # PML forms (B, B, B) masks
    xbm: bool = False  # wrapped in a cross-batch memory of 2 B rows
    bar_a: bool = False  # the batch-all / semi-hard bar applies


def _combos() -> list[Combo]:
    pair = [
        ("contrastive", "ContrastiveLoss", {}),
        ("circle", "CircleLoss", {}),
        ("lifted_structure", "LiftedStructureLoss", {}),
        ("generalized_lifted_structure", "GeneralizedLiftedStructureLoss", {}),
        ("npair", "NPairsLoss", {}),
        ("nca", "NCALoss", {}),
        ("ranked_list", "RankedListLoss", {"margin": 0.4, "Tn": 10.0}),
    ]
    classes = [
        ("proxy_nca", "ProxyNCALoss"),
        ("proxy_anchor", "ProxyAnchorLoss"),
        ("soft_triple", "SoftTripleLoss"),
        ("normalized_softmax", "NormalizedSoftmaxLoss"),
        ("cosface", "CosFaceLoss"),
        ("arcface", "ArcFaceLoss"),
        ("sphereface", "SphereFaceLoss"),
        ("subcenter_arcface", "SubCenterArcFaceLoss"),
    ]
    triplet = {"pml_loss": "TripletMarginLoss"}
    return [
        Combo("triplet (all, no miner)", "triplet", **triplet, pml_cubic=True, bar_a=True),
        Combo("triplet + batch_all", "triplet", "batch_all", **triplet, pml_cubic=True, bar_a=True),
        Combo(
            "triplet + semi_hard",
            "triplet",
            "semi_hard",
            **triplet,
            pml_miner="TripletMarginMiner",
            pml_miner_params={"margin": 0.2, "type_of_triplets": "semihard"},
            pml_cubic=True,
            bar_a=True,
        ),
        Combo(
            "triplet + batch_hard", "triplet", "batch_hard", **triplet, pml_miner="BatchHardMiner"
        ),
        Combo("triplet + hardest_negative", "triplet", "hardest_negative"),
        Combo("triplet + random_negative", "triplet", "random_negative"),
        Combo(
            "multi_similarity + ms miner",
            "multi_similarity",
            "multi_similarity",
            pml_loss="MultiSimilarityLoss",
            pml_miner="MultiSimilarityMiner",
        ),
        Combo(
            "xbm(multi_similarity) + ms miner",
            "multi_similarity",
            "multi_similarity",
            pml_loss="MultiSimilarityLoss",
            pml_miner="MultiSimilarityMiner",
            xbm=True,
        ),
        *(Combo(ours, ours, pml_loss=theirs, pml_params=params) for ours, theirs, params in pair),
        Combo("margin", "margin", pml_loss="MarginLoss", pml_cubic=True),
        Combo(
            "margin + distance_weighted",
            "margin",
            "distance_weighted",
            pml_loss="MarginLoss",
            pml_miner="DistanceWeightedMiner",
        ),
        Combo(
            "soft_margin_triplet",
            "soft_margin_triplet",
            pml_loss="TripletMarginLoss",
            pml_params={"margin": 0.0, "smooth_loss": True},
            pml_cubic=True,
        ),
        *(Combo(ours, ours, pml_loss=theirs) for ours, theirs in classes),
        Combo("binomial_deviance", "binomial_deviance"),
        Combo("ratio_triplet", "ratio_triplet"),
    ]


COMBOS = _combos()


# ---------------------------------------------------------------------------------- the worker


def _status_kib(key: str) -> int:
    """A /proc/self/status field in KiB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _watchdog(budget_kib: int) -> None:
    """Stop the process (exit 3) once its RSS passes the budget."""
    while True:
        if _status_kib("VmRSS") > budget_kib:
            print(json.dumps({"error": "memory > budget"}), flush=True)
            os._exit(3)
        time.sleep(0.02)


def _build(spec: dict[str, Any]) -> Callable[[], None]:
    """One forward + backward of the configured side ("ours", "pml" or "baseline")."""
    import torch
    import torch.nn.functional as F

    batch, dim, side = spec["batch"], spec["dim"], spec["side"]
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(batch // K).repeat_interleave(K)[torch.randperm(batch, generator=gen)]
    emb = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    if side == "baseline":
        from deepembed.distances import pairwise_distance

        # XBM's loss compares the batch with itself and the M = 2B memory rows (constants)
        memory = F.normalize(torch.randn(spec["memory"], dim, generator=gen), dim=1)

        def run_baseline() -> None:
            e = emb.detach().requires_grad_(True)
            refs = torch.cat([e, memory]) if len(memory) else None
            pairwise_distance(e, refs, kind="euclidean").sum().backward()

        return run_baseline
    combo = next(c for c in COMBOS if c.name == spec["combo"])
    torch.manual_seed(0)
    if side == "ours":
        loss, miner = _ours(combo, batch, dim)
    else:
        loss, miner = _pml(combo, batch, dim)

    def run() -> None:
        e = emb.detach().requires_grad_(True)
        mined = miner(e, labels) if miner is not None else None
        loss(e, labels, mined).backward()

    return run


def _class_params(factory: Callable[..., Any], batch: int, dim: int) -> dict[str, int]:
    """num_classes / embedding_size where the factory requires them."""
    params = inspect.signature(factory).parameters
    wanted = {"num_classes": batch // K, "embedding_size": dim}
    return {k: v for k, v in wanted.items() if k in params and params[k].default is params[k].empty}


def _ours(combo: Combo, batch: int, dim: int) -> tuple[Any, Any]:
    from deepembed import losses, miners
    from deepembed.losses.xbm import CrossBatchMemory

    factory = losses.LOSSES.get(combo.loss)
    loss = factory(**_class_params(factory, batch, dim))
    miner = miners.create(combo.miner, **combo.miner_params) if combo.miner else None
    if combo.xbm:
        return CrossBatchMemory(loss, dim, 2 * batch, miner), None
    return loss, miner


def _pml(combo: Combo, batch: int, dim: int) -> tuple[Any, Any]:
    from pytorch_metric_learning import losses, miners

    from deepembed.losses import LOSSES

    # PML's margin-softmax losses take *args: ask our factory which sizes the loss needs
    sizes = _class_params(LOSSES.get(combo.loss), batch, dim)
    loss = getattr(losses, combo.pml_loss)(**sizes, **combo.pml_params)
    miner = getattr(miners, combo.pml_miner)(**combo.pml_miner_params) if combo.pml_miner else None
    if combo.xbm:
        return losses.CrossBatchMemory(loss, dim, 2 * batch, miner), None
    return loss, miner


def _fast_malloc() -> None:
    """Back to a heap that reuses freed blocks before timing: with every buffer its own mmap
    (right for measuring memory) each call would pay fresh zeroed pages, a cost the
    allocator normally avoids, and that would distort the times of both sides."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep freed memory
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: heap (not mmap) up to 1 GiB


def paired_worker(spec: dict[str, Any]) -> dict[str, float]:
    """Time several sides of one configuration in this process, interleaved: repeat r runs
    every side once, in an order rotated by r, so that a slow spell of this shared machine
    hits all sides alike. Returns {side: median ms}."""
    import torch

    torch.set_num_threads(spec["threads"])
    threading.Thread(target=_watchdog, args=(spec["budget_kib"],), daemon=True).start()
    _fast_malloc()
    steps = {side: _build({**spec, "side": side}) for side in spec["sides"]}
    for step in steps.values():
        for _ in range(spec["warmup"]):
            step()
    times: dict[str, list[float]] = {side: [] for side in steps}
    order = list(steps)
    for r in range(spec["repeats"]):
        for side in order[r % len(order) :] + order[: r % len(order)]:
            start = time.perf_counter()
            steps[side]()
            times[side].append(time.perf_counter() - start)
    return {side: statistics.median(t) * 1e3 for side, t in times.items()}


def worker(spec: dict[str, Any]) -> dict[str, float]:
    """Measure one configuration in this (fresh) process: peak MiB growth and median ms."""
    import torch

    if "sides" in spec:
        return paired_worker(spec)
    torch.set_num_threads(spec["threads"])
    threading.Thread(target=_watchdog, args=(spec["budget_kib"],), daemon=True).start()
    step = _build(spec)
    for _ in range(spec["warmup"]):
        step()
    # high-water mark := current RSS (without it, on old kernels, the peak counts from the
    # process start: an over-estimate)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    step()
    peak_mib = (_status_kib("VmHWM") - before) / 1024
    if not spec.get("time", True):  # the times come from paired_worker
        return {"peak_mb": peak_mib}
    _fast_malloc()
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": statistics.median(times) * 1e3, "peak_mb": peak_mib}


# ------------------------------------------------------------------------------------ the table


def measure(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one worker subprocess; its result or {"error": why}."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = (done.stderr or done.stdout).strip().splitlines()
    return {"error": tail[-1][:40] if tail else f"exit {done.returncode}"}


def flags(combo: Combo, batch: int, ours: dict, pml: dict | None, base: dict) -> str:
    """The bars this row misses: a (batch-all / semi-hard at 1024), b (vs PML), c (baseline)."""
    out = []
    ratio = pml["ms"] / ours["ms"] if pml and "ms" in pml and "ms" in ours else None
    slow = ratio is not None and ratio < 20
    if combo.bar_a and batch == 1024 and "ms" in ours and (slow or ours["peak_mb"] >= 100):
        out.append("a")
    if ratio is not None and ratio < 1:
        out.append("b")
    if "ms" in ours and "ms" in base and ours["ms"] > 5 * base["ms"]:
        out.append("c")
    return ",".join(out)


def _fmt(result: dict | None, key: str, digits: int = 1) -> str:
    if result is None:
        return "-"
    if key in result:
        return f"{result[key]:.{digits}f}"
    return result.get("error", "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--only", nargs="+", default=None, help="combo names (substrings)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per measurement")
    parser.add_argument("--mem-budget", type=float, default=8.0, help="GiB per measurement")
    parser.add_argument("--no-pml", action="store_true", help="ours and the baseline only")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    from deepembed import losses, miners

    combos = [c for c in COMBOS if args.only is None or any(o in c.name for o in args.only)]
    budget = args.mem_budget * 2**30
    common = {
        "threads": args.threads,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "budget_kib": int(budget / 1024),
    }
    header = (
        f"{'combo':34s} {'B':>5s} {'D':>4s} {'ours ms':>9s} {'PML ms':>9s} {'PML/ours':>8s} "
        f"{'ours/base':>9s} {'ours MB':>8s} {'PML MB':>8s}  flags"
    )
    print(header, flush=True)
    rows: list[tuple[str, ...]] = []
    baselines: dict[tuple[int, int], dict] = {}
    for combo in combos:
        missing = [n for n in (combo.loss,) if n not in losses.names()]
        missing += [n for n in (combo.miner,) if n is not None and n not in miners.names()]
        if missing:
            print(f"{combo.name:34s} skipped: {', '.join(missing)} not registered", flush=True)
            continue
        for batch in args.sizes:
            for dim in args.dims:
                memory = 2 * batch if combo.xbm else 0
                key = (batch, dim, memory)
                spec = {**common, "batch": batch, "dim": dim, "combo": combo.name}
                if key not in baselines:  # memory of the baseline (its time: paired below)
                    base_spec = {**spec, "side": "baseline", "memory": memory, "time": False}
                    baselines[key] = measure(base_spec, args.timeout)
                base = baselines[key]
                ours = measure({**spec, "side": "ours", "time": False}, args.timeout)
                pml: dict | None = None
                if combo.pml_loss is not None and not args.no_pml:
                    if combo.pml_cubic and 2 * batch**3 > budget:
                        pml = {"error": "skipped: O(B^3) > budget"}
                    else:
                        pml = measure({**spec, "side": "pml", "time": False}, args.timeout)
                # the times: all sides again in one process, interleaved (see paired_worker)
                res = {"ours": ours, "pml": pml, "baseline": base}
                sides = [n for n, r in res.items() if r is not None and "peak_mb" in r]
                paired = measure({**spec, "sides": sides, "memory": memory}, args.timeout)
                for name in sides:
                    ms = paired.get(name)
                    if ms is None:  # the paired run failed: time this side alone
                        alone = {**spec, "side": name, "memory": memory}
                        ms = measure(alone, args.timeout).get("ms")
                    if ms is not None:
                        res[name] = {**res[name], "ms": ms}  # type: ignore[dict-item]
                ours, pml, base = res["ours"], res["pml"], res["baseline"]
                if "ms" in base:
                    baselines[key] = base  # the latest paired time, for the summary line
                ratio = (
                    f"{pml['ms'] / ours['ms']:.1f}" if pml and "ms" in pml and "ms" in ours else "-"
                )
                vs_base = f"{ours['ms'] / base['ms']:.1f}" if "ms" in ours and "ms" in base else "-"
                row = (
                    combo.name,
                    str(batch),
                    str(dim),
                    _fmt(ours, "ms"),
                    _fmt(pml, "ms"),
                    ratio,
                    vs_base,
                    _fmt(ours, "peak_mb"),
                    _fmt(pml, "peak_mb"),
                    flags(combo, batch, ours, pml, base),
                )
                rows.append(row)
                print(
                    f"{row[0]:34s} {row[1]:>5s} {row[2]:>4s} {row[3]:>9s} {row[4]:>9s} "
                    f"{row[5]:>8s} {row[6]:>9s} {row[7]:>8s} {row[8]:>8s}  {row[9]}",
                    flush=True,
                )
    print("\nbaseline ((B, B + M) distances + backward; M = 2B memory rows for XBM), ms: ", end="")
    print(", ".join(f"B={b} D={d} M={m}: {_fmt(r, 'ms', 2)}" for (b, d, m), r in baselines.items()))
    if args.markdown:
        print(f"\n{args.threads} threads; median of {args.repeats}; peak = RSS growth of one call")
        print(
            "\n| loss + miner | B | D | ours ms | PML ms | PML/ours | ours/baseline "
            "| ours MB | PML MB | misses |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
