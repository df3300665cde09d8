"""The service in-process (FastAPI's test client): every endpoint against the library calls
it wraps (Searcher, the index), adds durable across a restart, micro-batching equal to
one-at-a-time embedding."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from deepembed.index.searcher import Searcher
from deepembed.service import ServiceSettings, create_app
from tests.service.conftest import KEY, PeakCalls, client_for, png

AUTH = {"X-API-Key": KEY}


def _ids(answer: dict) -> list[int]:
    return [hit["id"] for hit in answer["results"]]


def test_search_by_image_id_and_vector_equal_the_searcher(client, run_dir: Path) -> None:
    oracle = Searcher.open(run_dir / "index", run_dir / "model")
    image = Image.open(io.BytesIO(png(4, colour=1))).convert("RGB")
    by_image = client.post("/search", files={"image": ("q.png", png(4, colour=1))}, data={"k": 5})
    assert by_image.status_code == 200, by_image.text
    want = oracle.by_image(image, 5)
    assert _ids(by_image.json()) == [h.id for h in want]
    assert by_image.json()["results"][0]["id"] == 4  # an indexed image finds itself first
    np.testing.assert_allclose(
        [h["distance"] for h in by_image.json()["results"]], [h.distance for h in want], atol=1e-5
    )
    by_id = client.post("/search", json={"id": 4, "k": 6})
    assert _ids(by_id.json()) == [h.id for h in oracle.by_id(4, 6)]
    assert 4 not in _ids(by_id.json())
    vector = oracle.embed([image])[0]
    by_vector = client.post("/search", json={"vector": vector.tolist(), "k": 5})
    assert _ids(by_vector.json()) == _ids(by_image.json())
    hit = by_image.json()["results"][1]
    assert hit["label_name"] == ["red", "green", "blue"][hit["label"]]
    assert hit["metadata"] == {"colour": hit["label_name"]}
    assert hit["thumbnail"] == f"/items/{hit['id']}/image?size=160"


def test_filters_keep_only_matching_items(client) -> None:
    answer = client.post("/search", json={"id": 0, "k": 20, "filters": {"label": [2]}}).json()
    assert len(answer["results"]) == 10 and {h["label"] for h in answer["results"]} == {2}
    multipart = client.post(
        "/search",
        files={"image": ("q.png", png(1))},
        data={"k": "20", "filters": json.dumps({"colour": "green"})},
    ).json()
    assert {h["metadata"]["colour"] for h in multipart["results"]} == {"green"}


def test_add_get_image_delete_and_restart(run_dir: Path) -> None:
    upload = png(99, size=48, colour=0)
    with client_for(run_dir) as client:
        added = client.post(
            "/items",
            files=[("image", ("a.png", upload)), ("image", ("b.png", png(98, colour=2)))],
            data={"label": "0", "metadata": json.dumps({"colour": "red", "shop": "x"})},
            headers=AUTH,
        )
        assert added.status_code == 200, added.text
        new = added.json()["ids"]
        assert new == [30, 31]
        item = client.get("/items/30").json()
        assert item | {"image": None} == {
            "id": 30, "label": 0, "label_name": "red",
            "metadata": {"colour": "red", "shop": "x"}, "image": None,
        }  # fmt: skip
        stored = client.get("/items/30/image")
        assert stored.content == upload and stored.headers["content-type"] == "image/png"
        thumb = Image.open(io.BytesIO(client.get("/items/30/image?size=16").content))
        assert max(thumb.size) <= 16
        found = client.post("/search", files={"image": ("q.png", upload)}, data={"k": 3}).json()
        assert found["results"][0]["id"] == 30
        assert client.delete("/items/31", headers=AUTH).json() == {"removed": 31}
        assert client.get("/items/31").status_code == 404
        assert client.get("/health").json()["items"] == 31
    with client_for(run_dir) as again:  # a new service on the same run: the adds are there
        assert again.get("/health").json()["items"] == 31
        assert again.get("/items/30/image").content == upload
        assert again.get("/items/31").status_code == 404
        assert 31 not in _ids(again.post("/search", json={"id": 30, "k": 40}).json())


def test_images_of_indexed_files_are_served_from_their_source(client, run_dir: Path) -> None:
    answer = client.get("/items/7/image?size=32")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    want = Image.open(run_dir / "images" / "7.png").convert("RGB")
    got = Image.open(io.BytesIO(answer.content)).convert("RGB")
    assert got.size == (32, 32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want.resize((32, 32))), atol=40)


def test_health_stats_metrics_page_and_openapi(client) -> None:
    assert client.get("/health").json() == {"status": "ok", "items": 30}
    client.post("/search", json={"id": 1})
    client.post("/search", json={"id": 1, "k": 0})
    stats = client.get("/stats").json()
    assert stats["items"] == 30 and stats["spec"] == "Flat" and stats["uptime_s"] >= 0
    assert "api_key" not in stats["settings"]
    text = client.get("/metrics").text
    assert 'deepembed_requests_total{method="POST",route="/search",status="200"} 1' in text
    assert 'deepembed_requests_total{method="POST",route="/search",status="400"} 1' in text
    assert 'deepembed_request_errors_total{method="POST",route="/search"} 1' in text
    assert 'deepembed_request_seconds_count{method="POST",route="/search"} 2' in text
    page = client.get("/")
    assert page.status_code == 200 and 'id="results"' in page.text
    assert "searchById" in client.get("/static/app.js").text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/items", "/items/{item_id}", "/items/{item_id}/image"} <= set(paths)


def _concurrent_searches(app, images: list[bytes]) -> list[list[int]]:
    async def go() -> list[list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answers = await asyncio.gather(
                *(client.post("/search", files={"image": ("q.png", b)}) for b in images)
            )
        return [_ids(a.json()) for a in answers]

    return asyncio.run(go())


def test_micro_batching_embeds_together_with_the_same_results(run_dir: Path) -> None:
    images = [png(100 + i, colour=i % 3) for i in range(12)]
    results, batches = {}, {}
    for name, options in {"batched": {"max_batch": 32, "batch_wait_ms": 50.0},
                          "one-by-one": {"max_batch": 1}}.items():  # fmt: skip
        searcher = Searcher.open(run_dir / "index", run_dir / "model")
        app = create_app(searcher, ServiceSettings(**options))  # type: ignore[arg-type]
        results[name] = _concurrent_searches(app, images)
        batches[name] = app.state.service.batcher.batches
    assert results["batched"] == results["one-by-one"]
    assert batches["one-by-one"] == 12
    assert batches["batched"] < 12  # 12 requests at once: embedded in fewer passes


def test_without_batching_image_searches_hold_one_of_max_passes_slots(run_dir: Path) -> None:
    """Batching off: a search by image decodes, embeds and searches in one worker thread,
    at most max_passes at once, with the results of the batched service."""
    images = [png(200 + i, colour=i % 3) for i in range(8)]
    searcher, calls = Searcher.open(run_dir / "index", run_dir / "model"), PeakCalls()
    searcher.embed = calls.wrap(searcher.embed)  # type: ignore[method-assign]
    app = create_app(searcher, ServiceSettings(max_batch=1, max_passes=2))
    got = _concurrent_searches(app, images)
    batched = _concurrent_searches(
        create_app(Searcher.open(run_dir / "index", run_dir / "model")), images
    )
    assert got == batched and calls.peak == 2 and app.state.service.batcher.batches == 8


def test_an_unexpected_failure_is_a_json_500_without_traceback(client) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals /etc/x")

    client.app.state.service.searcher.by_id = broken
    answer = client.post("/search", json={"id": 1})
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error (see the server log)"}
    assert client.get("/health").status_code == 200
