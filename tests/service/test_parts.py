"""The service's parts on their own: the readers-writer lock, the image store's names and
orphan sweep, a run's dataset images, the metrics text, concurrent adds and searches, and
the app over a milvus-lite index."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from deepembed import index
from deepembed.data.item_images import DatasetImages
from deepembed.index.searcher import Searcher
from deepembed.service import ServiceSettings, create_app
from deepembed.service.concurrency import ReadWriteLock
from deepembed.service.images import ImageStore
from deepembed.service.metrics import Metrics
from tests.service.conftest import KEY, PeakCalls, client_for, png

AUTH = {"X-API-Key": KEY}


def test_read_write_lock_shares_reads_and_excludes_writes() -> None:
    lock, log, inside = ReadWriteLock(), [], []

    def reader(i: int) -> None:
        with lock.read():
            inside.append(i)
            time.sleep(0.05)
            log.append(("r", len(inside)))
            inside.remove(i)

    def writer() -> None:
        with lock.write():
            log.append(("w", len(inside)))

    with ThreadPoolExecutor(6) as pool:
        for i in range(4):
            pool.submit(reader, i)
        time.sleep(0.01)
        pool.submit(writer)
        for i in range(4, 6):
            pool.submit(reader, i)
    assert max(n for kind, n in log if kind == "r") > 1  # readers overlapped
    assert [n for kind, n in log if kind == "w"] == [0]  # the writer was alone
    # a waiting writer goes before readers that came after it
    assert log.index(("w", 0)) < len(log) - 2


def test_image_store_names_come_from_integer_ids_and_sweep_drops_orphans(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "uploads")
    for i in (3, 1500, 1501):
        store.put(i, png(i), "PNG")
    assert store.find(1500) == tmp_path / "uploads" / "1" / "1500.png"
    (tmp_path / "uploads" / "1" / ".1502.tmp").write_bytes(b"half")
    store.sweep(1501)  # the catalogue's next id: 1501 and the temp file are orphans
    assert store.find(3) and store.find(1500) and store.find(1501) is None
    assert not list((tmp_path / "uploads").rglob(".*.tmp"))
    for bad in ("../x", -1, 1.5):
        with pytest.raises(ValueError, match="non-negative integers"):
            store.find(bad)  # type: ignore[arg-type]


def test_dataset_images_of_a_csv_run(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ["path,label,split"]
    for i in range(6):
        Image.new("RGB", (20 + i, 10), (40 * i, 0, 0)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,c{i % 2},{'test' if i >= 2 else 'train'}")
    (folder / "items.csv").write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    config = {"data": {"name": "csv", "root": str(folder / "items.csv")}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    gallery = DatasetImages.of_run(run)
    assert gallery is not None
    assert gallery(0).size == (22, 10)  # the test split's first item is 2.png
    assert gallery(3).size == (25, 10) and gallery(4) is None
    assert DatasetImages.of_run(tmp_path) is None  # no config.yaml: no dataset
    # the hashing protocol draws its query and database from every item: ids are rows of all
    config["data"] |= {"protocol": "hashing", "hash_query_per_class": 1}
    config["data"] |= {"hash_train_per_class": 1}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    query, database = DatasetImages.of_run(run, "query"), DatasetImages.of_run(run, "gallery")
    assert query is not None and database is not None
    from deepembed.config import load_config
    from deepembed.training.build import open_eval_splits

    q_set, db_set = open_eval_splits(load_config(run / "config.yaml"))
    assert db_set is not None and set(q_set.ids) & set(db_set.ids) == set()
    for split, images in ((q_set, query), (db_set, database)):
        for item_id, path in zip(split.ids, split.paths, strict=True):
            assert images(int(item_id)).size == Image.open(path).size


def test_metrics_text_is_prometheus_exposition() -> None:
    metrics = Metrics()
    metrics.observe("POST", "/search", 200, 0.003)
    metrics.observe("POST", "/search", 400, 7.0)
    text = metrics.render({"items": 5.0})
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? [0-9.e+-]+$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert 'le="0.005"} 1' in text and 'le="+Inf"} 2' in text and "deepembed_items 5.0" in text


def test_concurrent_adds_and_searches_see_whole_items(run_dir: Path) -> None:
    """4 writers and 4 searchers at once: no error; each search's results are items whose
    catalogue rows exist (never a half-added item); every acknowledged add is there."""
    errors, added = [], []
    with client_for(run_dir) as client:

        def add(seed: int) -> None:
            answer = client.post("/items", files={"image": ("a.png", png(seed))}, headers=AUTH)
            (
                added.extend(answer.json()["ids"])
                if answer.status_code == 200
                else errors.append(answer.text)
            )

        def search(seed: int) -> None:
            answer = client.post("/search", files={"image": ("q.png", png(seed))}, data={"k": 50})
            if answer.status_code != 200:
                errors.append(answer.text)
                return
            for hit in answer.json()["results"]:
                if client.get(f"/items/{hit['id']}").status_code != 200:
                    errors.append(f"search returned id {hit['id']} with no item")

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda s: (add if s % 2 else search)(s), range(200, 240)))
        assert errors == []
        assert sorted(added) == list(range(30, 50))
        assert client.get("/health").json()["items"] == 50


def test_the_app_over_milvus_lite(tmp_path: Path, run_dir: Path) -> None:
    vectors = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    idx = index.create(8, "cosine", "FLAT", uri=str(tmp_path / "g.db"))
    idx.add(vectors, np.arange(20), np.arange(20) % 2)
    settings = ServiceSettings(images_dir=tmp_path / "uploads", api_key=KEY)
    with TestClient(create_app(Searcher(idx, run_dir / "model"), settings)) as client:
        found = client.post("/search", json={"vector": vectors[3].tolist(), "k": 3}).json()
        assert found["results"][0]["id"] == 3
        new = client.post("/items", files={"image": ("a.png", png(5))}, headers=AUTH).json()
        assert new == {"ids": [20]}
        assert client.get("/items/20/image").content == png(5)
        assert client.delete("/items/3", headers=AUTH).status_code == 200
        again = client.post("/search", json={"vector": vectors[3].tolist(), "k": 3}).json()
        assert 3 not in [h["id"] for h in again["results"]]
        assert client.get("/health").json()["items"] == 20


@pytest.mark.parametrize("max_passes", [2, 5])
def test_without_batching_at_most_max_passes_run_at_once(max_passes: int) -> None:
    """Batching off: each image is embedded in a worker thread, never more than max_passes
    at once, each counted as a pass of one."""
    from deepembed.service.concurrency import MicroBatcher

    calls = PeakCalls()
    embed_many = calls.wrap(lambda images: np.asarray(images, np.float32)[:, None] * 3)

    async def twelve() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.embed(i) for i in range(12)))

    batcher = MicroBatcher(embed_many, wait_ms=5, max_batch=1, max_passes=max_passes)
    assert batcher.off
    rows = asyncio.run(twelve())  # 12 worker threads (anyio's pool has 40)
    assert [float(r[0]) for r in rows] == [3.0 * i for i in range(12)]
    assert calls.peak == max_passes  # the limit is reached, and never passed
    assert (batcher.batches, batcher.batched_items) == (12, 12)


def test_micro_batcher_groups_what_arrives_during_a_pass_and_survives_errors() -> None:
    import asyncio

    from deepembed.service.concurrency import MicroBatcher

    sizes: list[int] = []

    def embed_many(images: list[int]) -> np.ndarray:
        sizes.append(len(images))
        time.sleep(0.2)
        if -1 in images:
            raise RuntimeError("model failed")
        return np.asarray(images, np.float32)[:, None] * 2

    async def scenario() -> tuple[list[object], list[float]]:
        batcher = MicroBatcher(embed_many, wait_ms=0, max_batch=4)
        first = asyncio.create_task(batcher.embed(1))
        await asyncio.sleep(0.05)  # the first pass is running: the next 6 wait for it
        rest = [asyncio.create_task(batcher.embed(x)) for x in (2, 3, -1, 5, 6, 7)]
        got = await asyncio.gather(first, *rest, return_exceptions=True)
        after = await batcher.embed(8)  # the batcher still works after a failed pass
        return got, [float(after[0])]

    got, after = asyncio.run(scenario())
    assert sizes == [1, 4, 2, 1]  # alone, then the waiting ones in passes of max_batch
    assert float(got[0][0]) == 2.0
    assert all(isinstance(g, RuntimeError) for g in got[1:5])  # the failed pass's waiters
    assert [float(g[0]) for g in got[5:]] == [12.0, 14.0] and after == [16.0]
