"""What every route shares: JSON errors that log one line, bounded bodies,
content-type checks, and running database work off the event loop.

A bad request never reaches the database: handlers check the token,
signature, content type and size first, then raise ``Problem``; the app's
exception handler turns it into ``{"error": code, "message": ...}`` with the
status, and logs one line (``http_rejected``) with the method, the route
pattern (never the raw path: unsubscribe tokens are capabilities), the
status and the code. No body, header value, address or secret is logged.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("engage.web")


class Problem(Exception):
    """A request engage refuses: becomes a 4xx (or 503) JSON error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def route_of(request: Request) -> str:
    """The matched route's pattern (``/u/{token}``), or ``unmatched``."""
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")


def log_rejected(request: Request, status: int, code: str) -> None:
    level = logging.WARNING if status in (401, 403) else logging.INFO
    log.log(
        level,
        "http_rejected",
        extra={
            "event": "http_rejected",
            "method": request.method,
            "route": route_of(request),
            "status": status,
            "code": code,
        },
    )


def problem_response(request: Request, exc: Problem) -> Response:
    log_rejected(request, exc.status, exc.code)
    return JSONResponse(
        {"error": exc.code, "message": exc.message}, status_code=exc.status, headers=exc.headers
    )


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_media_type(request: Request, *allowed: str) -> None:
    if media_type(request) not in allowed:
        raise Problem(
            415, "unsupported_media_type", f"the body must be sent as {' or '.join(allowed)}"
        )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or 413 beyond ``limit`` bytes (checked on Content-Length
    first, then while reading, so a liar is cut off too)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "bad_request", "invalid Content-Length")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> Problem:
    shown = f"{limit // 1_000_000} MB" if limit >= 1_000_000 else f"{limit // 1000} kB"
    return Problem(413, "too_large", f"the body is larger than {shown}")


def prefers_html(request: Request) -> bool:
    """A browser (``Accept: text/html``) rather than a mail client or a script."""
    return "text/html" in request.headers.get("accept", "")
