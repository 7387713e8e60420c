"""``POST /webhooks/twilio/status`` and ``POST /webhooks/twilio/inbound``.

Twilio signs every request with ``X-Twilio-Signature``: an HMAC of the URL
it called and the form fields, keyed with the account's auth token. The URL
is the one Twilio was given, ``public_url`` + the path, not the one the
reverse proxy forwarded (``http://127.0.0.1:8080/...``), so the check uses
the configured ``public_url`` (with the request's query string, which
Twilio signs too). Checked with the SDK's ``RequestValidator`` before any
field is used: missing header 401, wrong signature 403, nothing changed.

Both endpoints answer empty TwiML: engage sends no automatic reply (Twilio's
own opt-out handling answers STOP, START and HELP).
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...timeutil import utcnow
from .. import feedback
from ..context import WebContext
from ..feedback.ledger import UNKNOWN
from ..http import Problem, log, read_body, require_media_type

SIGNATURE = "X-Twilio-Signature"
MAX_BODY = 64_000
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
SETTLE_SECONDS = 1.0  # a receipt for a send being recorded right now: wait once
_STATUSES = {
    "queued",
    "accepted",
    "scheduled",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "read",
    "canceled",
    "receiving",
    "received",
}
_FINAL = {"delivered", "undelivered", "failed"}


def _twiml() -> Response:
    return Response(EMPTY_TWIML, media_type="text/xml")


def routes(ctx: WebContext) -> list[BaseRoute]:
    from twilio.request_validator import RequestValidator

    assert ctx.twilio_token is not None
    validator = RequestValidator(ctx.twilio_token)
    base = ctx.config.public_url.rstrip("/")

    def public_url(request: Request) -> str:
        path = request.scope["path"]
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):
            path = path[len(root) :]
        query = request.scope.get("query_string", b"").decode("latin-1")
        return base + path + (f"?{query}" if query else "")

    async def signed_form(request: Request) -> ImmutableMultiDict[str, str]:
        require_media_type(request, "application/x-www-form-urlencoded")
        signature = request.headers.get(SIGNATURE)
        if not signature:
            raise Problem(401, "missing_signature", f"{SIGNATURE} is required")
        body = await read_body(request, MAX_BODY)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise Problem(400, "bad_request", "the form is not UTF-8") from None
        params: ImmutableMultiDict[str, str] = ImmutableMultiDict(pairs)
        if not validator.validate(public_url(request), params, signature):
            raise Problem(403, "invalid_signature", "the signature does not verify")
        return params

    def required(params: ImmutableMultiDict[str, str], *names: str) -> str:
        for name in names:
            if params.get(name):
                return params[name]
        raise Problem(400, "missing_field", f"{names[0]} is required")

    async def status(request: Request) -> Response:
        params = await signed_form(request)
        sid = required(params, "MessageSid", "SmsSid")
        state = required(params, "MessageStatus", "SmsStatus").lower()
        code = params.get("ErrorCode") or None
        to = params.get("To") or None

        async def apply() -> feedback.sms.StatusResult:
            now = utcnow()
            return await ctx.run(
                feedback.transaction,
                ctx.engine,
                feedback.apply_twilio_status,
                sid,
                state,
                code,
                to,
                now,
            )

        result = await apply()
        if result.outcome == UNKNOWN and state in _FINAL:
            await asyncio.sleep(SETTLE_SECONDS)
            result = await apply()
        label = state if state in _STATUSES else "other"
        ctx.metrics.count_webhook("twilio", [((label, result.outcome), 1)])
        return _twiml()

    async def inbound(request: Request) -> Response:
        params = await signed_form(request)
        sid = required(params, "MessageSid", "SmsMessageSid", "SmsSid")
        number = required(params, "From")
        extra = {}
        if params.get("NumMedia", "0") not in ("", "0"):
            extra["num_media"] = params["NumMedia"]
        kind, outcome = await ctx.run(
            feedback.transaction,
            ctx.engine,
            feedback.apply_twilio_inbound,
            sid,
            number,
            params.get("Body"),
            params.get("OptOutType"),
            utcnow(),
            extra,
        )
        ctx.metrics.count_webhook("twilio", [((f"inbound_{kind}", outcome), 1)])
        if kind in ("stop", "start") and outcome == "applied":
            event = "sms_opted_out" if kind == "stop" else "sms_opted_in"
            log.info(event, extra={"event": event, "number": number})
        return _twiml()

    return [
        Route("/webhooks/twilio/status", status, methods=["POST"]),
        Route("/webhooks/twilio/inbound", inbound, methods=["POST"]),
    ]
