"""The service's own exceptions: each becomes a one-line JSON answer with its status."""

from __future__ import annotations

from deepembed.errors import DataError


class ApiError(Exception):
    """An answer other than 200: `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyTooLargeError(Exception):
    """A request body over the limit, raised while it streams in (HTTP 413)."""


class NotFoundError(DataError):
    """An unknown item id (HTTP 404)."""

    status = 404


def body_too_large(exc: BaseException) -> BodyTooLargeError | None:
    """The BodyTooLargeError inside `exc`, which anyio's task groups (Starlette's
    middleware) may have wrapped in an ExceptionGroup; None when there is none."""
    if isinstance(exc, BodyTooLargeError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if (found := body_too_large(inner)) is not None:
            return found
    return None
