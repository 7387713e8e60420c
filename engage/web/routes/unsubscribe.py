"""``GET|POST /u/{token}``: the unsubscribe page and the RFC 8058 one-click endpoint.

* ``GET`` shows the page and never changes anything (mail scanners and link
  previews fetch every link);
* ``POST`` unsubscribes (a mailbox provider's one-click body
  ``List-Unsubscribe=One-Click``, as ``multipart/form-data`` or urlencoded,
  or the page's button); a urlencoded body with ``action=resubscribe`` (the
  page's button after unsubscribing) re-subscribes. Both are idempotent.

A token that does not verify (forged, altered, truncated) gets 400 and
changes nothing. Browsers (``Accept: text/html``) get pages, everything else
JSON.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...errors import NotFound
from ...timeutil import utcnow
from ...unsubscribe import InvalidToken, UnsubscribeClaim, read_token
from .. import feedback
from ..context import WebContext
from ..http import Problem, log, log_rejected, media_type, prefers_html, read_body
from ..pages import error_page, subscription_page

MAX_BODY = 16_000  # a one-click body is 26 bytes; the page's forms, a few more
BAD_LINK = (
    "This unsubscribe link is not valid. Your mail program may have cut it off: "
    "copy the whole link from the email, or use the unsubscribe option of your mail program."
)
GONE = "We no longer hold this address: you will not receive anything from us at it."


def routes(ctx: WebContext) -> list[BaseRoute]:
    config = ctx.config

    def refuse(request: Request, status: int, code: str, message: str) -> Response:
        if prefers_html(request):
            log_rejected(request, status, code)
            return error_page(config, status, message)
        raise Problem(status, code, message)

    def claim_of(request: Request) -> UnsubscribeClaim:
        assert ctx.secret_key is not None
        return read_token(ctx.secret_key, request.path_params["token"])

    def answer(request: Request, sub: feedback.Subscription, changed: str | None) -> Response:
        if prefers_html(request):
            return subscription_page(
                config, sub, request.path_params["token"], just_changed=changed
            )
        return JSONResponse(
            {"channel": sub.channel, "status": sub.state, "changed": sub.changed},
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    async def show(request: Request) -> Response:
        try:
            claim = claim_of(request)
            sub = await ctx.run(feedback.look_up, ctx.engine, claim)
        except InvalidToken:
            return refuse(request, 400, "invalid_token", BAD_LINK)
        except NotFound:
            return refuse(request, 404, "unknown_recipient", GONE)
        return answer(request, sub, None)

    async def change(request: Request) -> Response:
        try:
            claim = claim_of(request)
        except InvalidToken:
            return refuse(request, 400, "invalid_token", BAD_LINK)
        body = await read_body(request, MAX_BODY)
        resubscribe = False
        if media_type(request) == "application/x-www-form-urlencoded":
            try:
                fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
            except UnicodeDecodeError:
                fields = []
            resubscribe = ("action", "resubscribe") in fields
        now = utcnow()
        try:
            if resubscribe:
                sub = await ctx.run(feedback.resubscribe, ctx.engine, claim, now)
            else:
                sub = await ctx.run(feedback.unsubscribe, ctx.engine, claim, now)
        except NotFound:
            return refuse(request, 404, "unknown_recipient", GONE)
        if sub.changed:
            log_change(request, claim, "resubscribed" if resubscribe else "unsubscribed")
        return answer(request, sub, "resubscribed" if resubscribe else "unsubscribed")

    return [
        Route("/u/{token}", show, methods=["GET"]),
        Route("/u/{token}", change, methods=["POST"]),
    ]


def log_change(request: Request, claim: UnsubscribeClaim, what: str) -> None:
    log.info(
        what,
        extra={
            "event": what,
            "channel": claim.channel,
            "campaign": claim.campaign,
            "customer": claim.customer_id,
        },
    )
