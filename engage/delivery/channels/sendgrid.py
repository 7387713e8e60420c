"""Email through SendGrid's v3 Mail Send API, with the official ``sendgrid`` SDK.

Why not ``SendGridAPIClient.send()``: it passes no timeout, and urllib's
default is to wait forever, so one stuck connection would pin a worker. We call
``client.client.mail.send.post(request_body=..., timeout=...)`` instead, which
is what ``send()`` does underneath. The SDK's ``python_http_client.Client``
shares one mutable header dict between the objects its attribute chain
creates, so each worker thread gets its own ``SendGridAPIClient``
(``threading.local``); they are cheap (urllib opens a connection per request
anyway).

Only engage's message id goes to SendGrid as ``custom_args`` (webhook events
echo it back); categories are ``["engage", <campaign>]`` plus configured extras.
No PII beyond the recipient address itself ever leaves in metadata.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.error
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from ...config import Config, SendGridChannel
from ...errors import PermanentSendError, SendError, TransientSendError
from ._common import CONNECT, NETWORK, TIMEOUT, parse_retry_after, scrub
from .base import ChannelKind, Outgoing, SendResult

__all__ = ["SendGridEmailChannel", "build_mail_payload", "map_sendgrid_error"]

_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.to(\.|$)")
_MAX_CATEGORY = 255
_MAX_CATEGORIES = 10


def build_mail_payload(message: Outgoing, settings: SendGridChannel) -> dict[str, Any]:
    """The v3 ``mail/send`` JSON body for one rendered email."""
    if message.channel != "email":
        raise PermanentSendError(f"sendgrid cannot send a {message.channel} message")
    sender: dict[str, str] = {"email": settings.from_email}
    if settings.from_name:
        sender["name"] = settings.from_name
    content = []
    # SendGrid requires text/plain first, and rejects empty values.
    if message.text:
        content.append({"type": "text/plain", "value": message.text})
    if message.html:
        content.append({"type": "text/html", "value": message.html})
    if not content:
        raise PermanentSendError("email has neither a text nor an HTML body")
    categories: list[str] = []
    for cat in ["engage", message.campaign, *settings.categories]:
        cat = cat[:_MAX_CATEGORY]
        if cat and cat not in categories:
            categories.append(cat)
    payload: dict[str, Any] = {
        "personalizations": [{"to": [{"email": message.to}]}],
        "from": sender,
        "subject": message.subject or "",
        "content": content,
        "custom_args": {"engage_message_id": str(message.message_id)},
        "categories": categories[:_MAX_CATEGORIES],
    }
    if settings.reply_to:
        payload["reply_to"] = {"email": settings.reply_to}
    if message.headers:
        payload["headers"] = dict(message.headers)
    if settings.sandbox_mode:
        payload["mail_settings"] = {"sandbox_mode": {"enable": True}}
    return payload


def map_sendgrid_error(exc: BaseException, *, api_key: str = "", to: str = "") -> SendError:
    """The one place SendGrid/urllib failures become Transient or Permanent errors.

    The API key never appears in the result and the recipient address is masked.
    """

    def clean(text: str) -> str:
        return scrub(text, secrets=(api_key,), addresses=(to,))

    if isinstance(exc, HTTPError):
        status = int(exc.status_code)
        headers = exc.headers
        retry_after = _retry_after(headers)
        errors = _error_list(exc.body)
        detail = clean("; ".join(e.get("message") or "" for e in errors if e.get("message")))
        text = f"SendGrid HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429 or status >= 500:
            return TransientSendError(text, code=str(status), retry_after=retry_after)
        if status in (401, 403):
            # The body is not echoed: say what to check, never the key.
            return PermanentSendError(
                f"SendGrid HTTP {status}: the API key was rejected or lacks the mail.send "
                "permission (check SENDGRID_API_KEY)",
                code=str(status),
            )
        if status == 400 and any(_RECIPIENT_FIELD.match(e.get("field") or "") for e in errors):
            return PermanentSendError(text, code=str(status), suppress_reason="invalid_address")
        return PermanentSendError(text, code=str(status))
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return TransientSendError("SendGrid timed out", code=TIMEOUT)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return TransientSendError("SendGrid timed out while connecting", code=CONNECT)
        if isinstance(reason, OSError):  # refused, DNS, unreachable: never sent
            return TransientSendError(
                clean(f"cannot reach SendGrid: {type(reason).__name__}: {reason}"), code=CONNECT
            )
        return TransientSendError(clean(f"cannot reach SendGrid: {reason}"), code=NETWORK)
    if isinstance(exc, ConnectionRefusedError):
        return TransientSendError("cannot reach SendGrid: connection refused", code=CONNECT)
    if isinstance(exc, ConnectionError | http.client.HTTPException | OSError):
        return TransientSendError(
            clean(f"SendGrid connection failed: {type(exc).__name__}: {exc}"), code=NETWORK
        )
    raise TypeError(f"not a SendGrid transport error: {type(exc).__name__}")


def _retry_after(headers: Any) -> float | None:
    """``Retry-After``, else SendGrid's own ``X-RateLimit-Reset`` (a Unix time)."""
    if headers is None:
        return None
    retry_after = parse_retry_after(headers.get("Retry-After"))
    reset = headers.get("X-RateLimit-Reset")
    if retry_after is None and reset:
        try:
            retry_after = max(0.0, float(reset) - time.time())
        except ValueError:
            return None
    return retry_after


def _error_list(body: Any) -> list[dict[str, Any]]:
    try:
        data = json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    except (TypeError, ValueError, AttributeError):
        return []
    errors = data.get("errors") if isinstance(data, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


class SendGridEmailChannel:
    """The ``sendgrid`` email channel; safe to share between worker threads."""

    provider = "sendgrid"
    kind: ChannelKind = "email"

    def __init__(self, settings: SendGridChannel, api_key: str) -> None:
        self.settings = settings
        self._api_key = api_key
        self._host = settings.api_host.rstrip("/")
        self._local = threading.local()

    @classmethod
    def from_config(cls, config: Config) -> SendGridEmailChannel:
        return cls(config.channels.sendgrid, config.secret("SENDGRID_API_KEY"))

    def __repr__(self) -> str:  # never show the key
        return f"<SendGridEmailChannel host={self._host!r}>"

    def _endpoint(self) -> Any:
        """This thread's ``client.mail.send``. Built once: each attribute of the
        SDK's chain constructs a new ``Client``, and the endpoint holds no state
        between calls (its headers are fixed here, before the first request)."""
        endpoint = getattr(self._local, "endpoint", None)
        if endpoint is None:
            client = SendGridAPIClient(self._api_key, host=self._host)
            # Set once so the SDK's setdefault() never mutates the dict mid-request.
            client.client.request_headers["Content-Type"] = "application/json"
            endpoint = self._local.endpoint = client.client.mail.send
        return endpoint

    def send(self, message: Outgoing) -> SendResult:
        payload = build_mail_payload(message, self.settings)
        endpoint = self._endpoint()
        try:
            response = endpoint.post(request_body=payload, timeout=self.settings.timeout)
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            raise map_sendgrid_error(exc, api_key=self._api_key, to=message.to) from None
        provider_id = response.headers.get("X-Message-Id") if response.headers else None
        return SendResult(provider=self.provider, provider_id=provider_id)

    def close(self) -> None:
        """Nothing to release: urllib keeps no connections between requests."""
