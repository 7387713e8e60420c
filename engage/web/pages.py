"""The unsubscribe page: small, server-rendered, no script, in the shop's name.

Every value is escaped; the one inline style sheet is allowed by its hash in
a strict Content-Security-Policy, forms post only to this origin, and the
page is neither cached, framed, indexed nor given a Referer (its URL is
the token).
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

from starlette.responses import HTMLResponse

from ..config import Config
from ..logs import mask_pii
from .feedback import Subscription

_STYLE = (
    "body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;background:#f6f6f4;"
    "color:#222;margin:0}main{max-width:34rem;margin:12vh auto;background:#fff;"
    "padding:2rem 2.2rem;border-radius:8px;box-shadow:0 1px 4px rgba(0,0,0,.08)}"
    "h1{font-size:1.3rem;margin:0 0 1rem}p{line-height:1.5}"
    "button{font:inherit;padding:.6rem 1.2rem;border:0;border-radius:6px;background:#222;"
    "color:#fff;cursor:pointer}.quiet{color:#666;font-size:.9rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
}
_WHAT = {"email": "emails", "sms": "text messages"}


def _page(config: Config, title: str, body: str, status: int = 200) -> HTMLResponse:
    shop = escape(config.shop.name)
    support = config.shop.support_email
    footer = f'<p class="quiet">Questions? Write to {escape(support)}.</p>' if support else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · {shop}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{shop}</h1>{body}{footer}</main></body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _form(action: str, label: str, name: str, value: str) -> str:
    return (
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
        f'<button type="submit">{escape(label)}</button></form>'
    )


def subscription_page(
    config: Config, sub: Subscription, token: str, *, just_changed: str | None = None
) -> HTMLResponse:
    """The page for one token: ``just_changed`` is ``unsubscribed`` or
    ``resubscribed`` after a POST."""
    what = f"{escape(config.shop.name)} {_WHAT[sub.channel]}"
    who = escape(mask_pii(sub.address)) if sub.address else "This address"
    # A relative action (the page is /u/<token>), so it works behind a path prefix too.
    here = token
    if sub.state == "blocked":
        body = (
            f"<p>{who} does not receive {what}: it was taken off our list"
            " (for instance after a delivery failure or a spam report).</p>"
            "<p>If you want to hear from us again, please contact us.</p>"
        )
        return _page(config, "Preferences", body)
    if sub.state == "unsubscribed":
        lead = (
            f"<p>Done: {who} is unsubscribed and will get no more marketing {what}.</p>"
            if just_changed == "unsubscribed"
            else f"<p>{who} is unsubscribed from marketing {what}.</p>"
        )
        body = (
            lead
            + "<p>Changed your mind?</p>"
            + _form(here, "Re-subscribe", "action", "resubscribe")
        )
        return _page(config, "Unsubscribed", body)
    lead = (
        f"<p>Welcome back: {who} will receive {what} again.</p>"
        if just_changed == "resubscribed"
        else f"<p>Unsubscribe {who} from marketing {what}?</p>"
    )
    return _page(
        config, "Unsubscribe", lead + _form(here, "Unsubscribe", "List-Unsubscribe", "One-Click")
    )


def error_page(config: Config, status: int, message: str) -> HTMLResponse:
    return _page(config, "Link not valid", f"<p>{escape(message)}</p>", status)
