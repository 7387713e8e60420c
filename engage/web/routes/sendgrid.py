"""``POST /webhooks/sendgrid``: SendGrid's signed Event Webhook.

Checked before anything is read into the database, cheapest first: the
content type, the signature headers, the body size, the timestamp within
``serve.webhook_tolerance`` of now (a replayed old batch is refused even with
a valid signature), then the ECDSA P-256 signature over timestamp + raw body
with the SDK's own ``EventWebhook``. Missing signature headers: 401; a bad
signature or a stale timestamp: 403; nothing is changed.

A verified batch is applied in one transaction (``feedback.apply_sendgrid``).
Events for messages whose send is still being recorded (``sending``) are
left out of it; the request waits a moment and applies them again, and if
they are still not ready it answers 503 (the rest of the batch is kept):
SendGrid's retry of the batch then applies them, the others being
recognised as duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from datetime import datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...timeutil import utcnow
from .. import feedback
from ..context import WebContext
from ..feedback.email import HANDLED
from ..feedback.ledger import DEFERRED, INVALID, Outcomes
from ..http import Problem, read_body, require_media_type

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_BODY = 8_000_000
SETTLE_SECONDS = 1.0  # how long a batch waits for sends being recorded
_KINDS = HANDLED | {"processed", "deferred", "group_resubscribe", "malformed"}


def routes(ctx: WebContext) -> list[BaseRoute]:
    from cryptography.exceptions import InvalidSignature
    from sendgrid.helpers.eventwebhook import EventWebhook

    verifier = EventWebhook()
    verifier.public_key = ctx.sendgrid_key
    tolerance = ctx.config.serve.webhook_tolerance.total_seconds()

    def verified(payload: str, signature: str, timestamp: str) -> bool:
        try:
            return bool(verifier.verify_signature(payload, signature, timestamp))
        except (ValueError, InvalidSignature):  # a signature that is not DER
            return False

    async def apply(events: list[feedback.EmailEvent], now: datetime) -> feedback.Applied:
        return await ctx.run(feedback.transaction, ctx.engine, feedback.apply_sendgrid, events, now)

    async def webhook(request: Request) -> Response:
        require_media_type(request, "application/json")
        signature = request.headers.get(SIGNATURE)
        timestamp = request.headers.get(TIMESTAMP)
        if not signature or not timestamp:
            raise Problem(401, "missing_signature", f"{SIGNATURE} and {TIMESTAMP} are required")
        body = await read_body(request, MAX_BODY)
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
            raise Problem(403, "stale_timestamp", "the signed timestamp is not recent")
        try:
            payload = body.decode("utf-8")
            base64.b64decode(signature, validate=True)
        except (UnicodeDecodeError, binascii.Error):
            raise Problem(403, "invalid_signature", "the signature does not verify") from None
        if not verified(payload, signature, timestamp):
            raise Problem(403, "invalid_signature", "the signature does not verify")
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            raise Problem(400, "invalid_json", "the body is not JSON") from None
        if not isinstance(data, list):
            raise Problem(400, "invalid_json", "the body must be a JSON array of events")

        now = utcnow()
        events, bad = feedback.parse_sendgrid(data)
        done = await apply(events, now)
        outcomes = done.outcomes
        if done.deferred:  # sends being recorded right now: give them a moment, once
            await asyncio.sleep(SETTLE_SECONDS)
            for e in done.deferred:
                outcomes[e.kind, DEFERRED] -= 1
            again = await apply(done.deferred, now)
            outcomes.update(again.outcomes)
        if bad:
            outcomes["malformed", INVALID] += bad
        ctx.metrics.count_webhook(
            "sendgrid", [((_kind(k), o), n) for (k, o), n in outcomes.items()]
        )
        summary = summarize(len(data), outcomes)
        if summary.get(DEFERRED):
            return JSONResponse(summary, status_code=503, headers={"Retry-After": "60"})
        return JSONResponse(summary)

    return [Route("/webhooks/sendgrid", webhook, methods=["POST"])]


def _kind(kind: str) -> str:
    return kind if kind in _KINDS else "other"  # bounded label values


def summarize(received: int, outcomes: Outcomes) -> dict[str, int]:
    """``{"received": n, "<outcome>": n, ...}`` for the response body."""
    out: dict[str, int] = {"received": received}
    for (_, outcome), n in sorted(outcomes.items()):
        if n:
            out[outcome] = out.get(outcome, 0) + n
    return out
