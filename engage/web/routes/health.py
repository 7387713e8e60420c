"""``GET /healthz`` (the database answers) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ..context import WebContext
from ..http import log_rejected
from ..metrics import CONTENT_TYPE


def routes(ctx: WebContext) -> list[BaseRoute]:
    def ping() -> None:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def healthz(request: Request) -> Response:
        try:
            await ctx.run(ping)
        except DBAPIError:
            log_rejected(request, 503, "database_unavailable")
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    async def metrics(request: Request) -> Response:
        body = await ctx.run(ctx.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
