"""Service test pieces: a run directory (a small_cnn model and an index of coloured test
images), the in-process client, image bytes of every kind, a real server launcher."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from deepembed import index
from deepembed.index.searcher import Searcher
from deepembed.models.embedder import Embedder, EmbedderSpec
from deepembed.service import ServiceSettings, create_app

T = TypeVar("T")

KEY = "test-key-123"
COLOURS = ["red", "green", "blue"]


def png(seed: int = 0, size: int = 40, colour: int | None = None, fmt: str = "PNG") -> bytes:
    """Image bytes: random 8-px blocks, tinted towards `colour` (0-2) when given."""
    rng = np.random.default_rng(seed)
    side = max(1, size // 8)
    blocks = rng.integers(0, 160, size=(side, side, 3)).repeat(8, 0).repeat(8, 1)[:size, :size]
    if colour is not None:
        blocks[..., colour] += 95
    out = io.BytesIO()
    Image.fromarray(blocks.astype(np.uint8)).save(out, fmt)
    return out.getvalue()


def make_run(root: Path, n: int = 30) -> Path:
    """<root>/run: model/ (small_cnn, 8-d, random weights) and index/ (Flat) of n images
    stored as files, labels 0-2 by colour, metadata {"colour": name}."""
    run = root / "run"
    torch.manual_seed(0)
    spec = EmbedderSpec(backbone_params={"widths": [4, 4, 4, 8, 8]}, embedding_dim=8)
    Embedder(spec).save(run / "model")
    images = run / "images"
    images.mkdir(parents=True)
    paths = []
    for i in range(n):
        path = images / f"{i}.png"
        path.write_bytes(png(i, colour=i % 3))
        paths.append(path)
    idx = index.create(8, "cosine", "Flat", uri=run / "index")
    idx.class_names = dict(enumerate(COLOURS))
    searcher = Searcher(idx, run / "model")
    labels = np.arange(n) % 3
    searcher.add_images(paths, np.arange(n), labels, [{"colour": COLOURS[c]} for c in labels])
    idx.save()
    idx.close()
    return run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def client_for(run: Path, **settings: object) -> TestClient:
    searcher = Searcher.open(run / "index", run / "model")
    options = {"images_dir": run / "uploads", "api_key": KEY} | settings
    app = create_app(searcher, ServiceSettings(**options))  # type: ignore[arg-type]
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(run_dir: Path) -> Iterator[TestClient]:
    with client_for(run_dir) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`deepembed serve RUN` as a subprocess on a free loopback port, its output in a log
    file (a pipe left unread fills and stalls the server); used by tests and benches."""

    def __init__(
        self, run: Path, *extra: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> None:
        self.run, self.port = run, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "deepembed", "serve", str(run), "--port", str(self.port)]
        self.log = run.parent / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*cmd, "--api-key", KEY, *extra],
                env=os.environ | {"PYTHONUNBUFFERED": "1"} | (env or {}),
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout:.0f} s")

    def cpu(self) -> float | None:
        """The server's CPU seconds so far (Linux /proc), or None."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, kill: bool = False) -> None:
        if self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class PeakCalls:
    """Wraps a function to record how many calls run at once (`peak`); each call sleeps
    `hold` seconds first, so calls that may overlap do."""

    def __init__(self, hold: float = 0.05) -> None:
        self.hold, self.running, self.peak = hold, 0, 0
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., T]) -> Callable[..., T]:
        def counted(*args: object) -> T:
            with self._lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            time.sleep(self.hold)
            with self._lock:
                self.running -= 1
            return fn(*args)

        return counted
