"""Run a function in WORLD spawned processes forming one gloo process group (the
environment torchrun would give them), and collect what each rank returns."""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

WORLD = 2


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(run: Callable[[int], Any], world: int, port: int, folder: str, rank: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)  # several processes on a small machine
    try:
        torch.save(run(rank), Path(folder) / f"rank{rank}.pt")
    except BaseException:
        (Path(folder) / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def run_ranks(
    run: Callable[[int], Any], folder: Path, world: int = WORLD, timeout: float = 120
) -> list[Any]:
    """`run(rank)` in `world` spawned processes (a module-level function, so that spawn can
    import it); the results by rank. A rank stuck in a collective is killed at `timeout`."""
    context = mp.get_context("spawn")
    port = free_port()
    target = partial(_worker, run, world, port, str(folder))
    procs = [context.Process(target=target, args=(r,)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    errors = [e.read_text() for e in sorted(folder.glob("*.err"))]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]
