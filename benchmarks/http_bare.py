"""The reference server of the HTTP benchmark: the protocol work only.

Verifies the SendGrid signature with the SDK and decodes the events, or
checks the bearer token and decodes the items, and answers 200: what any
Python server must do with this traffic before it can store anything.
Run as ``uvicorn benchmarks.http_bare:create_app --factory``.
"""

from __future__ import annotations

import hmac
import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def create_app() -> Starlette:
    from sendgrid.helpers.eventwebhook import EventWebhook

    verifier = EventWebhook(os.environ["SENDGRID_WEBHOOK_PUBLIC_KEY"])
    token = ("Bearer " + os.environ["ENGAGE_API_TOKEN"]).encode()

    async def sendgrid(request: Request) -> Response:
        body = (await request.body()).decode()
        ok = verifier.verify_signature(
            body,
            request.headers["X-Twilio-Email-Event-Webhook-Signature"],
            request.headers["X-Twilio-Email-Event-Webhook-Timestamp"],
        )
        if not ok:
            return JSONResponse({"error": "invalid_signature"}, status_code=403)
        return JSONResponse({"received": len(json.loads(body))})

    async def ingest(request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), token):
            return JSONResponse({"error": "invalid_token"}, status_code=401)
        return JSONResponse({"received": len(json.loads(await request.body()))})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/webhooks/sendgrid", sendgrid, methods=["POST"]),
            Route("/v1/interactions", ingest, methods=["POST"]),
            Route("/healthz", healthz),
        ]
    )
