"""The service's endpoints. Request parsing is strict and answers one-line JSON errors;
the work itself is ServiceState's, run in worker threads."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from deepembed.index.searcher import Hit
from deepembed.service.errors import ApiError, body_too_large
from deepembed.service.images import MEDIA_TYPES, decode, thumbnail
from deepembed.service.state import ServiceState

ItemId = Annotated[int, Path(ge=0, le=2**63 - 1, description="An item id.")]
THUMBNAIL = 160


def _hits(hits: list[Hit], started: float) -> JSONResponse:
    """The search answer, serialised at once (plain types: no FastAPI encoding pass)."""
    return JSONResponse(
        {
            "results": [
                {
                    "id": h.id,
                    "distance": h.distance,
                    "label": h.label,
                    "label_name": h.label_name,
                    "metadata": h.metadata,
                    "thumbnail": f"/items/{h.id}/image?size={THUMBNAIL}",
                }
                for h in hits
            ],
            "took_ms": round((time.perf_counter() - started) * 1000, 2),
        }
    )


def add_routes(app: FastAPI, state: ServiceState, check_key: Callable[[Request], None]) -> None:
    """Register every endpoint on `app`; `check_key(request)` guards the changes."""
    error = ApiError
    settings = state.settings

    def k_of(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise error(400, f"k must be an integer from 1 to {settings.max_k}, got {value!r}")
        if not 1 <= value <= settings.max_k:
            raise error(400, f"k must be from 1 to {settings.max_k}, got {value}")
        return value

    def json_of(text: Any, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            raise error(400, f"{what} is not valid JSON: {exc}") from None

    def filters_of(value: Any) -> dict[str, Any] | None:
        value = json_of(value, "filters") if isinstance(value, str) else value
        if value is not None and not isinstance(value, dict):
            raise error(400, 'filters must be a JSON object such as {"label": [3, 7]}')
        return value or None

    def vector_of(value: Any) -> np.ndarray:
        if not isinstance(value, list) or not value:
            raise error(400, "vector must be a non-empty list of numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise error(400, "vector must hold numbers only")
        if state.index.binary:  # a hash model's packed code: bytes 0-255
            if not all(isinstance(v, int) and 0 <= v <= 255 for v in value):
                raise error(400, "a binary index takes vector as packed code bytes (0-255)")
            return np.asarray(value, np.uint8)
        if not all(math.isfinite(v) for v in value):
            raise error(400, "vector contains NaN or infinite values")
        return np.asarray(value, np.float32)

    async def form_of(request: Request, max_files: int) -> FormData:
        try:
            return await request.form(max_files=max_files, max_fields=20)
        except Exception as exc:  # malformed multipart; a body over the cap propagates
            if (too_large := body_too_large(exc)) is not None:
                raise error(413, str(too_large)) from None
            raise error(400, f"bad multipart form: {exc}") from None

    async def upload_of(upload: Any, name: str) -> tuple[bytes, str]:
        """(the bytes, a name for messages) of an uploaded file field."""
        if not isinstance(upload, UploadFile):
            raise error(400, f"{name} must be an uploaded file")
        return await upload.read(), upload.filename or name

    async def image_of(upload: Any, name: str) -> tuple[Any, bytes, str]:
        data, label = await upload_of(upload, name)
        image, fmt = await run_in_threadpool(decode, data, label, settings.max_pixels)
        return image, data, fmt

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = (resources.files("deepembed.service") / "static" / "index.html").read_text()
        return HTMLResponse(html)

    @app.get("/health", summary="Liveness: ok and the item count.")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "items": len(state.index)}

    @app.get("/stats", summary="Items, index type, model, uptime, batching.")
    async def stats() -> dict[str, Any]:
        return await run_in_threadpool(state.stats)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics.")
    async def metrics() -> PlainTextResponse:
        gauges = {"items": float(len(state.index)), "uptime_seconds": state.uptime()}
        gauges["embed_batches"] = float(state.batcher.batches)
        text = state.metrics.render(gauges)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post(
        "/search",
        summary="Search by image (multipart: image, k, filters) or JSON {id | vector, k, filters}.",
    )
    async def search(request: Request) -> JSONResponse:
        started = time.perf_counter()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            form = await form_of(request, 1)
            if "image" not in form:
                raise error(400, "multipart search needs an `image` file")
            # k and filters first: a bad one costs no decoding or embedding
            query: dict[str, Any] = {"k": k_of(form.get("k", 10))}
            query["filters"] = filters_of(form.get("filters"))
            if state.batcher.off:  # decode, embed and search in one worker thread
                data, name = await upload_of(form["image"], "image")
                hits = await run_in_threadpool(state.search_image, data, name, query)
                return _hits(hits, started)
            image, _, _ = await image_of(form["image"], "image")
            query["vector"] = await state.batcher.embed(image)
        elif kind == "application/json":
            body = json_of(await request.body(), "the request body")
            if not isinstance(body, dict) or ("id" in body) == ("vector" in body):
                raise error(400, "JSON search needs exactly one of `id` or `vector`")
            unknown = set(body) - {"id", "vector", "k", "filters"}
            if unknown:
                raise error(400, f"unknown search field(s): {', '.join(sorted(unknown))}")
            query = {"k": k_of(body.get("k", 10)), "filters": filters_of(body.get("filters"))}
            if "id" in body:
                if isinstance(body["id"], bool) or not isinstance(body["id"], int):
                    raise error(400, f"id must be an integer, got {body['id']!r}")
                if not 0 <= body["id"] < 2**63:
                    raise error(404, f"no item with id {body['id']}")
                query["id"] = body["id"]
            else:
                query["vector"] = vector_of(body["vector"])
        else:
            raise error(415, "send multipart/form-data (an image) or application/json")
        return _hits(await run_in_threadpool(state.search, query), started)

    @app.post("/items", summary="Add images (multipart: image files, label, metadata).")
    async def add_items(request: Request) -> dict[str, Any]:
        check_key(request)
        form = await form_of(request, settings.max_files)
        files = form.getlist("image") + form.getlist("images")
        if not files:
            raise error(400, "send one or more `image` files")
        decoded = [await image_of(f, "image") for f in files]
        label = form.get("label")
        if label is not None and not (isinstance(label, str) and label.lstrip("-").isdigit()):
            raise error(400, f"label must be an integer, got {label!r}")
        meta = json_of(form["metadata"], "metadata") if "metadata" in form else {}
        metas = meta if isinstance(meta, list) else [meta] * len(files)
        if len(metas) != len(files) or not all(isinstance(m, dict) for m in metas):
            raise error(400, "metadata must be a JSON object, or one per image")
        rows = await asyncio.gather(*(state.batcher.embed(image) for image, _, _ in decoded))
        labels = None if label is None else [int(label)] * len(files)
        uploads = [(data, fmt) for _, data, fmt in decoded]
        ids = await run_in_threadpool(state.add, np.stack(rows), uploads, labels, metas)
        return {"ids": ids}

    @app.get("/items/{item_id}", summary="An item's label and metadata.")
    async def get_item(item_id: ItemId) -> dict[str, Any]:
        out = await run_in_threadpool(state.item, item_id)
        return out | {"image": f"/items/{item_id}/image"}

    @app.get("/items/{item_id}/image", summary="The stored image, or a thumbnail (?size=).")
    async def item_image(
        item_id: ItemId, size: Annotated[int | None, Query(ge=16, le=1024)] = None
    ) -> Response:
        path, image = await run_in_threadpool(state.image, item_id)
        if path is not None and size is None:
            return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "image/png"))
        if path is not None:
            from deepembed.data.images import load_image

            image = await run_in_threadpool(load_image, path, settings.max_pixels)
        png = await run_in_threadpool(thumbnail, image, size or 512)
        return Response(png, media_type="image/png")

    @app.delete("/items/{item_id}", summary="Remove an item (and its stored image).")
    async def delete_item(item_id: ItemId, request: Request) -> dict[str, Any]:
        check_key(request)
        await run_in_threadpool(state.remove, item_id)
        return {"removed": item_id}
