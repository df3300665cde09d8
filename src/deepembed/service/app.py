"""create_app(searcher, settings) -> FastAPI: the search service and its web page.

Every answer is JSON (errors: {"error": "<one line>"} with a 4xx, or 500 with no
traceback); every mutation needs the API key when one is set; request bodies are capped
before they are read; model and index work run in worker threads, off the event loop.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepembed.errors import UserError
from deepembed.index.searcher import Searcher
from deepembed.service.errors import ApiError, BodyTooLargeError, body_too_large
from deepembed.service.routes import add_routes
from deepembed.service.settings import ServiceSettings
from deepembed.service.state import GalleryImages, ServiceState

log = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes: at once from Content-Length, or
    while a chunked body streams in, before it is all in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode() or "0"
        if not length.isdigit() or int(length) > self.limit:
            why = "bad Content-Length" if not length.isdigit() else "request body too large"
            status = 400 if not length.isdigit() else 413
            message = f"{why}: the limit is {self.limit} bytes"
            return await JSONResponse({"error": message}, status)(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLargeError(f"request body too large: the limit is {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class Measure:
    """ASGI middleware: every request counted and timed by route template and status, and an
    unexpected failure answered as a one-line JSON 500 (the log has the traceback). Plain
    ASGI: Starlette's BaseHTTPMiddleware costs a task and a stream per request."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, str, int, float], None]) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, started = time.perf_counter(), 500, False

        async def sending(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:  # never a traceback to the client
            if started:  # too late for an error answer: the connection is dropped
                log.exception("%s %s failed mid-answer", scope["method"], scope["path"])
                raise
            if (too_large := body_too_large(exc)) is not None:
                response = JSONResponse({"error": str(too_large)}, 413)
            else:
                log.exception("%s %s failed", scope["method"], scope["path"])
                response = JSONResponse({"error": "internal error (see the server log)"}, 500)
            status = response.status_code
            await response(scope, receive, send)
        finally:  # the router leaves the matched route in the scope
            template = getattr(scope.get("route"), "path", "unmatched")
            self.observe(scope["method"], template, status, time.perf_counter() - start)


def _one_line(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'request'}: {first.get('msg', 'invalid request')}"


def check_key(settings: ServiceSettings, request: Request) -> None:
    """Mutations: the API key from X-API-Key or `Authorization: Bearer`, when one is set."""
    if settings.api_key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not given:
        raise ApiError(401, "this change needs the API key (X-API-Key header)")
    if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
        raise ApiError(403, "wrong API key")


def create_app(
    searcher: Searcher,
    settings: ServiceSettings | None = None,
    gallery_images: GalleryImages | None = None,
) -> FastAPI:
    """The service over `searcher` (its index and model); `gallery_images(id)` gives the
    image of an item that has no stored file (a run's dataset), or None."""
    settings = settings or ServiceSettings()
    state = ServiceState(searcher, settings, gallery_images)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        state.close()  # a last snapshot, then the catalogue closed

    app = FastAPI(
        title="deepembed search",
        summary="Search a gallery by image, by item or by vector; add and remove items.",
        lifespan=lifespan,
    )
    app.state.service = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        status = getattr(exc, "status", 400)
        return JSONResponse(
            {"error": str(exc).splitlines()[0] if str(exc) else "bad input"}, status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _one_line(exc)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code)

    app.add_middleware(Measure, observe=state.metrics.observe)
    add_routes(app, state, lambda request: check_key(settings, request))
    static = resources.files("deepembed.service") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"]
        )
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    return app
