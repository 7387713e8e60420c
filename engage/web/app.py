"""``create_app``: the Starlette application behind ``engage serve``.

The app is assembled from route modules, one per concern (``routes/``), each
a function ``routes(ctx) -> list[BaseRoute]`` over the shared ``WebContext``.
A module whose secret is missing is replaced by routes that answer 404
``endpoint_disabled``. To add a concern, write another module and add it to
``ROUTE_MODULES``; app-wide middleware goes into ``middleware()``. The
marketer interface (``ui``, with its own sign-in, sessions and security
headers) is mounted last, at ``/``, when ``ENGAGE_UI_PASSWORD`` or
``ENGAGE_UI_USERS`` is set.

Stateless: any number of processes on any machines may serve the same
database, beside any number of ``engage run`` workers. Nothing but the
database is shared (and, within one ``engage serve --workers N``, the
metrics files).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config import Config, load_config
from ..timeutil import utcnow
from .context import GROUPS, WebContext, build_context, web_engine
from .context import announce as announce_endpoints
from .feedback import prune
from .http import Problem, log, problem_response, route_of
from .routes import health, ingest, sendgrid, twilio, unsubscribe
from .ui import create_ui

# (group name or None for always on, module)
ROUTE_MODULES: tuple[tuple[str | None, ModuleType], ...] = (
    (None, health),
    ("unsubscribe", unsubscribe),
    ("sendgrid", sendgrid),
    ("twilio", twilio),
    ("ingest", ingest),
)
PRUNE_FIRST, PRUNE_EVERY = 60.0, 3600.0  # seconds: deleting old webhook event ids


def create_app(
    config: Config | None = None, *, engine: Engine | None = None, announce: bool = True
) -> Starlette:
    """The ASGI app. Without arguments (``uvicorn --factory engage.web:create_app``)
    it reads config.yaml as the CLI does (``ENGAGE_CONFIG``, else
    ``./config.yaml``) and secrets from the environment.

    Raises ``ConfigError`` for an unusable secret (see ``context``).
    """
    config = config or load_config()
    owns_engine = engine is None
    engine = engine or web_engine(config.db_url)
    ctx = build_context(config, engine)
    routes: list[BaseRoute] = []
    for group, module in ROUTE_MODULES:
        if group is None or ctx.enabled[group]:
            routes.extend(module.routes(ctx))
        else:
            routes.extend(_disabled(group))
    # The marketer interface (docs/ui.md), last: the API routes above match
    # first. None, logged once, when no sign-in is configured.
    ui = create_ui(config, engine)
    if ui is not None:
        routes.append(Mount("/", app=ui))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if announce:
            announce_endpoints(ctx)
        pruner = asyncio.create_task(_prune_forever(ctx))
        try:
            yield
        finally:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
            if owns_engine:
                engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=middleware(ctx),
        exception_handlers=_exception_handlers(),
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    return app


def middleware(ctx: WebContext) -> list[Middleware]:
    """App-wide middleware, outermost first."""
    return [Middleware(Observe, ctx=ctx)]


class Observe:
    """Times every request into the latency histogram, by route pattern.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task
    and a stream per request)."""

    def __init__(self, app: ASGIApp, ctx: WebContext) -> None:
        self.app = app
        self.latency = ctx.metrics.latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.latency.labels(scope["method"], route, str(status)).observe(
                time.perf_counter() - started
            )


def _disabled(group: str) -> list[BaseRoute]:
    g = next(g for g in GROUPS if g.name == group)

    async def disabled(request: Request) -> Response:
        raise Problem(
            404, "endpoint_disabled", f"this endpoint is not enabled on this server ({g.secret})"
        )

    return [Route(p.split(" ", 1)[1], disabled, methods=["GET", "POST"]) for p in g.paths]


Handler = Callable[[Request, Any], Awaitable[Response] | Response]


def _exception_handlers() -> dict[Any, Handler]:
    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(request, exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        message = {
            404: "no such endpoint",
            405: f"{request.method} is not allowed here",
        }.get(exc.status_code, str(exc.detail))
        return problem_response(
            request, Problem(exc.status_code, code, message, headers=dict(exc.headers or {}))
        )

    async def database_down(request: Request, exc: Exception) -> Response:
        log.error(
            "database error",
            extra={
                "event": "http_database_error",
                "route": route_of(request),
                "cause": type(getattr(exc, "orig", exc)).__name__,
            },
        )
        return problem_response(
            request, Problem(503, "database_unavailable", "the database is not available")
        )

    async def bug(request: Request, exc: Exception) -> Response:
        # Starlette's ServerErrorMiddleware answers with this, then re-raises
        # for uvicorn to log the traceback.
        return JSONResponse(
            {"error": "internal_error", "message": "an unexpected error; it has been logged"},
            status_code=500,
        )

    return {
        Problem: problem,
        HTTPException: http_error,
        DBAPIError: database_down,
        Exception: bug,
    }


async def _prune_forever(ctx: WebContext) -> None:
    """Delete webhook event ids past ``serve.event_retention``, hourly."""
    retention = ctx.config.serve.event_retention
    pause = PRUNE_FIRST
    while True:
        await asyncio.sleep(pause)
        pause = PRUNE_EVERY
        try:
            removed = await ctx.run(prune, ctx.engine, utcnow() - retention)
        except DBAPIError as exc:
            log.warning(
                "pruning webhook events failed",
                extra={"event": "webhook_prune_failed", "cause": type(exc.orig).__name__},
            )
            continue
        if removed:
            log.info("webhook events pruned", extra={"event": "webhook_pruned", "count": removed})
