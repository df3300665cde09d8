"""Service load (issue 16): `deepembed serve` under concurrent clients against the Searcher
called in-process with the same concurrency, with and without micro-batching.

Setup, in a temporary directory: a model (default: an untrained small_cnn, widths 16-32-64-
64-128, 128-d, 28x28 grey input; or --model DIR, a float model directory) and an index of
--gallery items (default 100,000, spec --spec "IVF1024,Flat", nprobe --nprobe) holding
random unit vectors of the model's dimension: search cost depends on the index, not on what
the vectors mean, so the gallery has no images. The index is trained on separate random
vectors, filled in chunks, saved, and copied afresh for each run so adds never accumulate.
Queries: 200 distinct 96x96 RGB PNGs (random 8-px blocks), sent as bytes.

Each run: --clients workers for --duration seconds, each request a search by image (k=10)
with probability 0.9, else an add of one image; a request counts as an error unless it
answers 200 with 10 results (search) or one id (add). Modes:

* in-process: --clients threads call the library as the service does: decode the PNG
  (PIL, RGB), `searcher.embed([image])` outside any lock, then `searcher.by_vector` under
  the read lock of a ReadWriteLock, or `index.add` under its write lock (faiss may not
  change while it is searched); faiss on one OpenMP thread, as `deepembed serve` sets it;
  no image files are stored (the service fsyncs each uploaded image, before its write lock);
* HTTP batched / unbatched: `deepembed serve RUN --max-batch 32 --batch-wait-ms 5` or
  `--max-batch 1` as a subprocess on 127.0.0.1, and --clients asyncio workers in this
  process, each with one keep-alive HTTP/1.1 connection (opened before the clock starts)
  over plain asyncio streams, sending prebuilt requests (bench/loadgen.py, in the manner of
  wrk: httpx cost ~2.7 ms of CPU per request, taken from the server on a 2-core machine);
  searches POST /search (multipart `image`, k), adds POST /items (multipart `image`,
  X-API-Key).

Warm-up requests before each run are not counted. Reported: requests, errors, p50 / p99
latency, requests/s, the ratio to in-process requests/s (bar: >= 0.7 with 0 errors), the
mean embed batch (GET /stats, warm-up excluded) and the CPU seconds of this process (the
load generator; in-process: the work itself) and of the server. The load generator, the
server and any other work share the machine's cores (2 on the development machine): the
load generator's CPU is taken from the server's. torch keeps its default threads on both
sides unless --torch-threads N is given (the server gets OMP_NUM_THREADS=N).

    .venv/bin/python bench/service.py [--gallery 100000] [--duration 60] [--clients 50]
        [--spec IVF1024,Flat] [--nprobe 16] [--model DIR] [--modes in-process batched unbatched]
        [--seed 0] [--torch-threads 0]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch
from PIL import Image

from deepembed import index
from deepembed.index.searcher import Searcher
from deepembed.index.specs import parse_spec
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.service.concurrency import ReadWriteLock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.service.conftest
from tests.service.conftest import KEY, Server

from loadgen import RawClient, multipart  # bench/, the script's folder, is on sys.path

K = 10
ADD_SHARE = 0.1
MODES = ("in-process", "batched", "unbatched")
SERVE_OPTIONS = {
    "batched": ["--max-batch", "32", "--batch-wait-ms", "5"],
    "unbatched": ["--max-batch", "1"],
}


def png(seed: int, size: int = 96) -> bytes:
    """PNG bytes of random 8-px RGB blocks."""
    rng = np.random.default_rng(seed)
    side = -(-size // 8)
    blocks = rng.integers(0, 256, size=(side, side, 3)).repeat(8, 0).repeat(8, 1)[:size, :size]
    out = io.BytesIO()
    Image.fromarray(blocks.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    rows = rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build(root: Path, args: argparse.Namespace) -> Path:
    """<root>/base: model/ and index/ of --gallery random unit vectors."""
    base = root / "base"
    if args.model:
        model = Embedder.load(args.model)
        shutil.copytree(args.model, base / "model")
    else:
        torch.manual_seed(args.seed)
        spec = EmbedderSpec(backbone_params={"widths": [16, 32, 64, 64, 128]}, embedding_dim=128)
        model = Embedder(spec)
        model.save(base / "model")
    if model.produces_codes:
        raise SystemExit("--model: a hash model; this benchmark builds float indexes only")
    dim, rng = model.embedding_dim, np.random.default_rng(args.seed)
    parsed = parse_spec(args.spec)
    idx = index.create(dim, "cosine", args.spec, uri=base / "index")
    if parsed.needs_training:
        idx.train(unit(max(39 * parsed.nlist, min(args.gallery, 65_536)), dim, rng))
    if parsed.nlist:
        idx.set_params(nprobe=args.nprobe)
    for at in range(0, args.gallery, 20_000):
        m = min(20_000, args.gallery - at)
        idx.add(unit(m, dim, rng), np.arange(at, at + m, dtype=np.int64))
    idx.save()
    idx.close()
    return base


def fresh_run(root: Path, base: Path, name: str) -> Path:
    """<root>/<name>: a copy of the base index, the base model linked."""
    run = root / name
    run.mkdir()
    shutil.copytree(base / "index", run / "index")
    (run / "model").symlink_to(base / "model")
    return run


@dataclass
class Tally:
    """What the workers of one run saw."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"search": [], "add": []})
    errors: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    cpu: float = 0.0
    server_cpu: float | None = None
    mean_batch: float | None = None

    def record(self, kind: str, started: float, error: str | None) -> None:
        self.latencies[kind].append(time.perf_counter() - started)
        if error:
            self.errors[error] += 1


def in_process(run: Path, pool: list[bytes], args: argparse.Namespace) -> Tally:
    """--clients threads calling the library for --duration seconds."""
    faiss.omp_set_num_threads(1)
    searcher = Searcher.open(run / "index", run / "model")
    idx, lock, tally = searcher.index, ReadWriteLock(), Tally()
    tally_lock = threading.Lock()

    def one(data: bytes, add: bool) -> str | None:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        vector = searcher.embed([image])
        if add:
            with lock.write():
                first = idx.next_id()
                idx.add(vector, np.asarray([first], np.int64), None, [{}])
            return None
        with lock.read():
            hits = searcher.by_vector(vector[0], K)
        return None if len(hits) == K else f"{len(hits)} results"

    for data in pool[:10]:  # warm-up, not counted
        one(data, False)
    one(pool[0], True)
    barrier = threading.Barrier(args.clients + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        rng = np.random.default_rng(args.seed + 1000 + i)
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            add = bool(rng.random() < ADD_SHARE)
            started = time.perf_counter()
            try:
                error = one(pool[rng.integers(len(pool))], add)
            except Exception as exc:  # counted, never fatal
                error = f"{type(exc).__name__}: {exc}"
            with tally_lock:
                tally.record("add" if add else "search", started, error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    cpu, start = time.process_time(), time.perf_counter()
    deadline[0] = start + args.duration
    barrier.wait()
    for t in threads:
        t.join()
    tally.elapsed, tally.cpu = time.perf_counter() - start, time.process_time() - cpu
    idx.close()
    return tally


def verdict(status: int, body: bytes, add: bool) -> str | None:
    """None when a search answered K results or an add one id, else what went wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:120]!r}"
    answer = json.loads(body)
    if add:
        return None if len(answer.get("ids", [])) == 1 else f"add answered {answer}"
    found = len(answer.get("results", []))
    return None if found == K else f"{found} results"


async def load(url: str, pool: list[bytes], args: argparse.Namespace) -> Tally:
    """--clients asyncio workers, one connection each, for --duration seconds."""
    tally, go, ready = Tally(), asyncio.Event(), asyncio.Semaphore(0)
    deadline = [0.0]
    searches = [multipart("/search", data, {"k": str(K)}, {}) for data in pool]
    adds = [multipart("/items", data, {}, {"X-API-Key": KEY}) for data in pool]

    async def worker(i: int) -> None:
        rng = np.random.default_rng(args.seed + 1000 + i)
        client = RawClient(url)
        try:
            status, body = await client.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            if status != 200:
                tally.errors[f"health: HTTP {status}: {body[:80]!r}"] += 1
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            tally.errors[f"connect: {type(exc).__name__}: {exc}"] += 1
        finally:
            ready.release()
        await go.wait()
        while time.perf_counter() < deadline[0]:
            add = bool(rng.random() < ADD_SHARE)
            which = int(rng.integers(len(pool)))
            started = time.perf_counter()
            try:
                status, body = await client.send((adds if add else searches)[which])
                error = verdict(status, body, add)
            except Exception as exc:  # dropped connections, bad answers: counted
                error = f"{type(exc).__name__}: {exc}"
            tally.record("add" if add else "search", started, error)
        await client.close()

    tasks = [asyncio.create_task(worker(i)) for i in range(args.clients)]
    for _ in range(args.clients):
        await ready.acquire()
    cpu, start = time.process_time(), time.perf_counter()
    deadline[0] = start + args.duration
    go.set()
    await asyncio.gather(*tasks)
    tally.elapsed, tally.cpu = time.perf_counter() - start, time.process_time() - cpu
    return tally


def over_http(run: Path, mode: str, pool: list[bytes], args: argparse.Namespace) -> Tally:
    """Start the server, warm it up, load it, read its batching figures, stop it."""
    threads = {"OMP_NUM_THREADS": str(args.torch_threads)} if args.torch_threads else {}
    server = Server(run, *SERVE_OPTIONS[mode], env=threads, timeout=120)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for data in pool[:10]:  # warm-up, not counted
                files = {"image": ("q.png", data)}
                client.post("/search", files=files, data={"k": str(K)}).raise_for_status()
            files, headers = {"image": ("q.png", pool[0])}, {"X-API-Key": KEY}
            client.post("/items", files=files, headers=headers).raise_for_status()
            before, cpu = client.get("/stats").json(), server.cpu()
            tally = asyncio.run(load(server.url, pool, args))
            after, cpu_after = client.get("/stats").json(), server.cpu()
        batches = after["embed_batches"] - before["embed_batches"]
        items = after["mean_batch"] * after["embed_batches"]
        items -= before["mean_batch"] * before["embed_batches"]
        tally.mean_batch = items / batches if batches else None
        if cpu is not None and cpu_after is not None:
            tally.server_cpu = cpu_after - cpu
    finally:
        server.stop()
    if tally.errors:
        tail = server.log.read_text()[-2000:]
        print(f"  server log ({server.log}), last lines:\n{tail}", flush=True)
    return tally


def ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(seconds, q)) * 1000 if seconds else float("nan")


def row(name: str, t: Tally, base: float | None) -> str:
    """One markdown table row; `base` is the in-process requests/s."""
    every, adds = t.latencies["search"] + t.latencies["add"], len(t.latencies["add"])
    errors, rate = sum(t.errors.values()), len(every) / t.elapsed
    ratio = f"{rate / base:.2f}" if base else "-"
    meets = "-" if not base or name == "in-process" else "no"
    if meets == "no" and rate / base >= 0.7 and errors == 0:
        meets = "yes"
    batch = "-" if t.mean_batch is None else f"{t.mean_batch:.2f}"
    server_cpu = "-" if t.server_cpu is None else f"{t.server_cpu:.1f}"
    return (
        f"| {name} | {len(every):,} ({adds:,} adds) | {errors} | {ms(every, 50):.1f} "
        f"| {ms(every, 99):.1f} | {ms(t.latencies['search'], 99):.1f} / "
        f"{ms(t.latencies['add'], 99):.1f} | {rate:,.1f} | {ratio} | {meets} | {batch} "
        f"| {t.cpu:.1f} / {server_cpu} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--spec", default="IVF1024,Flat")
    parser.add_argument("--nprobe", type=int, default=16, help="for IVF specs")
    parser.add_argument("--model", type=Path, help="a model directory (default: small_cnn)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads on both sides (0: default)"
    )
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(
        f"# {platform.node()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.2f}; "
        f"gallery {args.gallery:,} {args.spec}, {args.clients} clients, {args.duration:g} s, "
        f"{1 - ADD_SHARE:.0%} search / {ADD_SHARE:.0%} add",
        flush=True,
    )
    pool = [png(args.seed * 1000 + i) for i in range(200)]
    tallies: dict[str, Tally] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        root = Path(tmpdir)
        start = time.perf_counter()
        base = build(root, args)
        print(f"  built the gallery in {time.perf_counter() - start:.1f} s", flush=True)
        for mode in args.modes:
            run = fresh_run(root, base, mode)
            print(
                f"  {mode}: running {args.duration:g} s, load {os.getloadavg()[0]:.2f}", flush=True
            )
            if mode == "in-process":
                tallies[mode] = in_process(run, pool, args)
            else:
                tallies[mode] = over_http(run, mode, pool, args)
            for error, count in tallies[mode].errors.most_common(5):
                print(f"    {count} x {error}", flush=True)
    base_rate = None
    if (t := tallies.get("in-process")) is not None:
        base_rate = (len(t.latencies["search"]) + len(t.latencies["add"])) / t.elapsed
    print(
        "\n| mode | requests | errors | p50 ms | p99 ms | p99 ms search / add | requests/s "
        "| vs in-process | meets bar (>= 0.7, 0 errors) | mean embed batch "
        "| CPU s load / server |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    names = {"in-process": "in-process", "batched": "HTTP batched", "unbatched": "HTTP unbatched"}
    for mode, t in tallies.items():
        print(row(names[mode], t, base_rate))
    print(f"\nload at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
