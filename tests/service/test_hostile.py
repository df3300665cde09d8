# ruff: noqa: E501  (the table of cases reads best one case per line)
"""Hostile input: each request answered with a 4xx JSON error of one line naming the
problem, the server still up, nothing added or removed, no file written outside uploads."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import KEY, client_for, png

AUTH = {"X-API-Key": KEY}
LIMIT = 300_000  # the upload limit of this test's service (bytes)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A valid PNG header claiming 100,000 x 100,000 pixels, with a few bytes of data: a
    decoder that trusted it would allocate 30 GB."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def truncated_png() -> bytes:
    whole = png(3, size=64)
    return whole[: len(whole) // 2]


def gif() -> bytes:
    out = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(out, "PPM")  # a format outside the accepted list
    return out.getvalue()


def image(data: bytes, name: str = "q.png") -> dict[str, Any]:
    return {"files": {"image": (name, data)}}


def search_json(body: Any) -> dict[str, Any]:
    return {"content": body if isinstance(body, str) else json.dumps(body),
            "headers": {"Content-Type": "application/json"}}  # fmt: skip


V8 = [0.1] * 8
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("non-image file", "POST", "/search", image(b"hello, I am text", "x.png"), 415, "not an image"),
    ("PostScript", "POST", "/search", image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n", "a.eps"), 415, "not an image"),
    ("PPM (not accepted)", "POST", "/search", image(gif(), "a.png"), 415, "accepted type"),
    ("truncated PNG", "POST", "/search", image(truncated_png()), 400, "cannot decode"),
    ("decompression bomb", "POST", "/search", image(bomb_png()), 413, "pixels"),
    ("empty upload", "POST", "/search", image(b""), 400, "empty upload"),
    ("oversized upload", "POST", "/search", image(b"\0" * (LIMIT + 1)), 413, "too large"),
    ("oversized add", "POST", "/items", {"files": {"image": ("a.png", b"\0" * (LIMIT + 1))}, "headers": AUTH}, 413, "too large"),
    ("wrong vector dimension", "POST", "/search", search_json({"vector": [0.1] * 7}), 400, "(n, 8)"),
    ("NaN in vector", "POST", "/search", search_json('{"vector": [NaN, 0, 0, 0, 0, 0, 0, 1]}'), 400, "NaN"),
    ("infinity in vector", "POST", "/search", search_json('{"vector": [Infinity, 0, 0, 0, 0, 0, 0, 1]}'), 400, "NaN or infinite"),
    ("strings in vector", "POST", "/search", search_json({"vector": ["a"] * 8}), 400, "numbers only"),
    ("empty vector", "POST", "/search", search_json({"vector": []}), 400, "non-empty"),
    ("k = 0", "POST", "/search", search_json({"vector": V8, "k": 0}), 400, "k must be"),
    ("k = 10^9", "POST", "/search", search_json({"vector": V8, "k": 10**9}), 400, "from 1 to 1000"),
    ("k negative", "POST", "/search", search_json({"id": 1, "k": -3}), 400, "k must be"),
    ("k a string", "POST", "/search", search_json({"id": 1, "k": "ten"}), 400, "k must be"),
    ("k true", "POST", "/search", search_json({"id": 1, "k": True}), 400, "k must be"),
    ("k in a form", "POST", "/search", image(png(1)) | {"data": {"k": "1e3"}}, 400, "k must be"),
    ("bad JSON", "POST", "/search", search_json('{"id": 1,'), 400, "not valid JSON"),
    ("JSON not an object", "POST", "/search", search_json([1, 2]), 400, "exactly one of"),
    ("id and vector", "POST", "/search", search_json({"id": 1, "vector": V8}), 400, "exactly one of"),
    ("neither id nor vector", "POST", "/search", search_json({"k": 3}), 400, "exactly one of"),
    ("unknown field", "POST", "/search", search_json({"id": 1, "radius": 3}), 400, "unknown search field"),
    ("id not an integer", "POST", "/search", search_json({"id": "../1"}), 400, "id must be an integer"),
    ("unknown id search", "POST", "/search", search_json({"id": 999}), 404, "no item with id 999"),
    ("huge id search", "POST", "/search", search_json({"id": 10**30}), 404, "no item with id"),
    ("unknown filter key", "POST", "/search", search_json({"id": 1, "filters": {"size": 3}}), 400, "unknown filter key"),
    ("filters not an object", "POST", "/search", search_json({"id": 1, "filters": [1]}), 400, "filters must be"),
    ("filters bad JSON in a form", "POST", "/search", image(png(1)) | {"data": {"filters": "{"}}, 400, "not valid JSON"),
    ("text/plain body", "POST", "/search", {"content": "id=1", "headers": {"Content-Type": "text/plain"}}, 415, "multipart/form-data"),
    ("multipart without image", "POST", "/search", {"files": {"other": ("x.png", png(1))}}, 400, "needs an `image`"),
    ("image as a text field", "POST", "/search", {"data": {"image": "abc"}, "files": {"x": ("x", b"1")}}, 400, "uploaded file"),
    ("unknown item", "GET", "/items/999", {}, 404, "no item with id 999"),
    ("negative item id", "GET", "/items/-1", {}, 422, "item_id"),
    ("item id not a number", "GET", "/items/abc", {}, 422, "item_id"),
    ("item id too big", "GET", "/items/99999999999999999999", {}, 422, "item_id"),
    ("path traversal", "GET", "/items/..%2F..%2Fetc%2Fpasswd/image", {}, 404, "Not Found"),
    ("path traversal in the id", "GET", "/items/..%5Cetc/image", {}, 422, "item_id"),
    ("path traversal, dots", "GET", "/items/../../etc/passwd", {}, 404, "Not Found"),
    ("image of an unknown item", "GET", "/items/12345/image", {}, 404, "no item"),
    ("thumbnail size 0", "GET", "/items/1/image?size=0", {}, 422, "size"),
    ("thumbnail size huge", "GET", "/items/1/image?size=100000", {}, 422, "size"),
    ("delete without key", "DELETE", "/items/1", {}, 401, "API key"),
    ("delete with a wrong key", "DELETE", "/items/1", {"headers": {"X-API-Key": "nope"}}, 403, "wrong API key"),
    ("add without key", "POST", "/items", image(png(1)), 401, "API key"),
    ("add with a wrong bearer", "POST", "/items", image(png(1)) | {"headers": {"Authorization": "Bearer x"}}, 403, "wrong API key"),
    ("delete an unknown id", "DELETE", "/items/999", {"headers": AUTH}, 404, "no item with id 999"),
    ("add no files", "POST", "/items", {"data": {"label": "1"}, "files": {"x": ("x", b"")}, "headers": AUTH}, 400, "one or more `image`"),
    ("add a bad label", "POST", "/items", image(png(1)) | {"data": {"label": "cat"}, "headers": AUTH}, 400, "label must be an integer"),
    ("add bad metadata JSON", "POST", "/items", image(png(1)) | {"data": {"metadata": "{x"}, "headers": AUTH}, 400, "not valid JSON"),
    ("add metadata count", "POST", "/items", image(png(1)) | {"data": {"metadata": "[{}, {}]"}, "headers": AUTH}, 400, "one per image"),
    ("add a reserved metadata key", "POST", "/items", image(png(1)) | {"data": {"metadata": '{"label": 3}'}, "headers": AUTH}, 400, "reserved"),
    ("add one good one bad", "POST", "/items", {"files": [("image", ("a.png", png(1))), ("image", ("b.png", b"text"))], "headers": AUTH}, 415, "b.png"),
    ("unknown route", "GET", "/admin", {}, 404, "Not Found"),
    ("wrong method", "GET", "/search", {}, 405, "Method Not Allowed"),
]  # fmt: skip


@pytest.fixture(scope="module", params=[32, 1], ids=["batched", "unbatched"])
def hostile(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A service with micro-batching, and one without (an image search then decodes, embeds
    and searches in one worker thread: its errors must be answered the same)."""
    from tests.service.conftest import make_run

    run = make_run(tmp_path_factory.mktemp("hostile"))
    with client_for(run, max_upload_bytes=LIMIT, max_batch=request.param) as client:
        yield run, client


@pytest.mark.parametrize(
    ("name", "method", "url", "kwargs", "status", "needle"), CASES, ids=[c[0] for c in CASES]
)
def test_hostile_request_gets_a_4xx_json_error_and_changes_nothing(
    hostile: tuple[Path, Any], name: str, method: str, url: str, kwargs: dict, status: int,
    needle: str,
) -> None:  # fmt: skip
    run, client = hostile
    before = sorted(p.relative_to(run) for p in run.rglob("*") if "uploads" not in p.parts)
    answer = client.request(method, url, **kwargs)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and needle in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    assert client.get("/health").json() == {"status": "ok", "items": 30}  # up, nothing added
    assert not (run / "uploads").exists() or not any((run / "uploads").rglob("*.*"))
    after = sorted(p.relative_to(run) for p in run.rglob("*") if "uploads" not in p.parts)
    assert after == before


def test_at_least_thirty_hostile_cases() -> None:
    assert len(CASES) >= 30


def test_a_chunked_body_over_the_limit_is_cut_off_while_it_streams(hostile) -> None:
    """No Content-Length (chunked transfer): the cap applies as the bytes arrive."""
    _, client = hostile
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunks():
        yield head
        for _ in range(LIMIT // 10_000 + 2):
            yield b"\0" * 10_000

    answer = client.post(
        "/search",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert answer.status_code == 413 and "too large" in answer.json()["error"], answer.text
    assert client.get("/health").json()["items"] == 30
