"""A real server: `deepembed serve` as a subprocess on 127.0.0.1, killed with SIGKILL in
the middle of a stream of adds and restarted; a damaged index file at start; the CLI's
refusals."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from deepembed.cli.main import app
from tests.service.conftest import KEY, Server, make_run, png

AUTH = {"X-API-Key": KEY}
pytestmark = pytest.mark.serial


def test_search_add_remove_over_http(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    server = Server(run)
    try:
        found = httpx.post(server.url + "/search", files={"image": ("q.png", png(5, colour=2))})
        assert found.status_code == 200 and found.json()["results"][0]["id"] == 5
        added = httpx.post(server.url + "/items", files={"image": ("n.png", png(77))}, headers=AUTH)
        new = added.json()["ids"][0]
        assert httpx.get(f"{server.url}/items/{new}/image").content == png(77)
        assert httpx.delete(f"{server.url}/items/{new}", headers=AUTH).status_code == 200
        page = httpx.get(server.url + "/")
        assert page.status_code == 200 and "deepembed search" in page.text
        assert httpx.get(server.url + "/docs").status_code == 200
    finally:
        server.stop()


def test_sigkill_during_adds_loses_no_acknowledged_item(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    server = Server(run)
    acknowledged: dict[int, int] = {}  # id -> seed of its image
    stop = threading.Event()

    def add_forever() -> None:
        seed = 1000
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/items", files={"image": ("a.png", png(seed))})
                except httpx.HTTPError:
                    return  # the server died mid-request: that add was never acknowledged
                if answer.status_code == 200:
                    acknowledged[answer.json()["ids"][0]] = seed
                seed += 1

    writer = threading.Thread(target=add_forever)
    writer.start()
    try:
        while len(acknowledged) < 25 and writer.is_alive():
            threading.Event().wait(0.05)
        server.stop(kill=True)  # SIGKILL: no shutdown hook, no snapshot
    finally:
        stop.set()
        writer.join(30)
    assert len(acknowledged) >= 25
    again = Server(run)
    try:
        assert httpx.get(again.url + "/health").json()["items"] >= 30 + len(acknowledged)
        for item_id, seed in acknowledged.items():
            assert httpx.get(f"{again.url}/items/{item_id}").status_code == 200
            assert httpx.get(f"{again.url}/items/{item_id}/image").content == png(seed)
        last = max(acknowledged)
        found = httpx.post(
            again.url + "/search", files={"image": ("q.png", png(acknowledged[last]))}
        )
        assert found.json()["results"][0]["id"] == last
    finally:
        again.stop()


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_index_file_is_rebuilt_at_start(tmp_path: Path, damage: str) -> None:
    run = make_run(tmp_path)
    snapshot = run / "index" / "index.faiss"
    if damage == "missing":
        snapshot.unlink()
    else:
        snapshot.write_bytes(snapshot.read_bytes()[:100])
    server = Server(run)
    try:
        assert httpx.get(server.url + "/health").json()["items"] == 30
        found = httpx.post(server.url + "/search", json={"id": 3, "k": 29})
        assert sorted(h["id"] for h in found.json()["results"]) == [i for i in range(30) if i != 3]
    finally:
        server.stop()


def test_cli_refusals_are_one_line_exit_2(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    runner = CliRunner()
    public = runner.invoke(app, ["serve", str(run), "--host", "0.0.0.0"])
    assert public.exit_code == 2 and "without an API key" in public.output
    passes = runner.invoke(app, ["serve", str(run), "--max-batch", "1", "--max-passes", "-1"])
    assert passes.exit_code == 2 and "--max-passes >= 0" in passes.output
    missing = runner.invoke(app, ["serve", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "run directory not found" in missing.output
    no_index = tmp_path / "empty"
    no_index.mkdir()
    assert "no index in" in runner.invoke(app, ["serve", str(no_index)]).output


def test_a_refused_serve_leaves_the_process_thread_counts_alone(tmp_path: Path) -> None:
    """serve sets torch's and faiss's thread counts for the whole process: only when it
    actually serves (tests and library users calling the CLI in-process keep theirs)."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(app, ["serve", str(empty)]).exit_code == 2
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before
