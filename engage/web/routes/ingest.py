"""The ingest API: ``POST /v1/customers``, ``/v1/interactions`` (alias
``/v1/events``) and ``/v1/points``.

``Authorization: Bearer $ENGAGE_API_TOKEN`` (compared in constant time), a
JSON array of at most 1,000 objects and 1 MB, with the same fields as
``engage import`` (docs/import.md). Items go through ``engage.ingest.import_rows``,
the very validation and idempotent upserts of a file import: the same item
posted twice changes nothing, and a bad item is reported by its index while
the good ones are kept.

200 with counts and per-item errors; 422 (same body) when every item was
rejected; 400/401/413/415 before anything is read into the database.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...errors import EngageError
from ...ingest import import_rows
from ...timeutil import utcnow
from ..context import WebContext
from ..http import Problem, read_body, require_media_type

MAX_ITEMS = 1000
MAX_BODY = 1_000_000
PATHS = {
    "/v1/customers": "customers",
    "/v1/interactions": "interactions",
    "/v1/events": "interactions",
    "/v1/points": "points",
}


def routes(ctx: WebContext) -> list[BaseRoute]:
    assert ctx.api_token is not None
    expected = b"Bearer " + ctx.api_token

    def authorize(request: Request) -> None:
        given = request.headers.get("authorization")
        if not given:
            raise Problem(
                401,
                "missing_token",
                "send Authorization: Bearer <ENGAGE_API_TOKEN>",
                headers={"WWW-Authenticate": 'Bearer realm="engage"'},
            )
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise Problem(
                401,
                "invalid_token",
                "the bearer token is not valid",
                headers={"WWW-Authenticate": 'Bearer realm="engage", error="invalid_token"'},
            )

    def run(kind: str, items: list[Any]) -> dict[str, Any]:
        result = import_rows(
            ctx.engine, ctx.config, kind, enumerate(items), source="request", now=utcnow()
        )
        return {
            "kind": kind,
            "received": result.read,
            "inserted": result.inserted,
            "updated": result.updated,
            "unchanged": result.unchanged,
            "rejected": result.rejected,
            "errors": [
                {"index": p.line, "field": p.field, "message": p.message} for p in result.errors
            ],
        }

    def endpoint(kind: str) -> Any:
        async def ingest(request: Request) -> Response:
            authorize(request)
            require_media_type(request, "application/json")
            body = await read_body(request, MAX_BODY)
            try:
                items = json.loads(body)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                raise Problem(400, "invalid_json", "the body is not JSON") from None
            if not isinstance(items, list):
                raise Problem(400, "invalid_json", "the body must be a JSON array of objects")
            if len(items) > MAX_ITEMS:
                raise Problem(
                    413,
                    "too_many_items",
                    f"at most {MAX_ITEMS:,} items per request, got {len(items):,}",
                )
            try:
                summary = await ctx.run(run, kind, items)
            except EngageError as exc:
                raise Problem(503, "database_error", str(exc)) from None
            ctx.metrics.count_ingest(
                kind, ((k, summary[k]) for k in ("inserted", "updated", "unchanged", "rejected"))
            )
            every_item_rejected = (
                summary["received"] > 0 and summary["rejected"] == summary["received"]
            )
            return JSONResponse(summary, status_code=422 if every_item_rejected else 200)

        return ingest

    return [Route(path, endpoint(kind), methods=["POST"]) for path, kind in PATHS.items()]
