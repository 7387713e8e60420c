"""Email through SendGrid's v3 Mail Send API, with the official ``sendgrid`` SDK.

Why not ``SendGridAPIClient.send()``: it passes no timeout, and urllib's
default is to wait forever, so one stuck connection would pin a worker. We call
``client.client.mail.send.post(request_body=..., timeout=...)`` instead, which
is what ``send()`` does underneath. The SDK's ``python_http_client.Client``
shares one mutable header dict between the objects its attribute chain
creates, so each worker thread gets its own client (``threading.local``).

**Kept-alive connections.** The SDK's transport is urllib, which opens a new
TCP (and TLS) connection for every request and closes it afterwards, and its
``post()`` builds a urllib opener (every default handler, the proxy settings
read from the environment) for every request: a tenth of a send's CPU. So
each thread does what ``post()`` does, with one difference: the request (the
SDK endpoint's URL and headers, the JSON body) goes to the SDK's own
``_make_request`` (its seam for the transport, which turns HTTP errors into
the SDK's exceptions) with ``KeptAlive`` as the opener: one ``http.client``
connection per thread, reused while the server keeps it open. The answer is
read into the SDK's ``Response``. Behind an ``HTTPS_PROXY`` the SDK's own
``post()`` and urllib transport are used, as before.

**What a failure means** (see ``map_sendgrid_error``): like urllib, the
transport raises ``URLError`` for what fails while connecting or writing the
request (refused, DNS, connect timeout, a connection that broke before the
whole request was written: SendGrid cannot have acted on it) and lets what
fails after the request was written through bare (a read timeout, a dropped
connection): SendGrid may have accepted that message.

Only engage's message id goes to SendGrid as ``custom_args`` (webhook events
echo it back); categories are ``["engage", <campaign>]`` plus configured extras.
No PII beyond the recipient address itself ever leaves in metadata.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from python_http_client.client import Response
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from ...config import Config, SendGridChannel
from ...errors import (
    AmbiguousSendError,
    PermanentSendError,
    ProviderAuthError,
    SendError,
    TransientSendError,
)
from ._common import CONNECT, NETWORK, TIMEOUT, parse_retry_after, scrub
from .base import ChannelKind, Outgoing, SendResult

__all__ = ["KeptAlive", "SendGridEmailChannel", "build_mail_payload", "map_sendgrid_error"]

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
    """The one place SendGrid/transport failures become engage's send errors.

    The API key never appears in the result and the recipient address is masked.
    """

    def clean(text: str) -> str:
        return scrub(text, secrets=(api_key,), addresses=(to,))

    if isinstance(exc, HTTPError):
        status = int(exc.status_code)
        headers = exc.headers
        errors = _error_list(exc.body)
        detail = clean("; ".join(e.get("message") or "" for e in errors if e.get("message")))
        text = f"SendGrid HTTP {status}" + (f": {detail}" if detail else "")
        if status == 429 or status >= 500:
            return TransientSendError(text, code=str(status), retry_after=_retry_after(headers))
        if status in (401, 403):
            # The key itself is never echoed: say what to check.
            return ProviderAuthError(
                f"SendGrid refused the credentials (HTTP {status}"
                + (f": {detail}" if detail else "")
                + "): check SENDGRID_API_KEY, its mail.send permission and the sender identity",
                code=str(status),
            )
        if status == 400 and any(_RECIPIENT_FIELD.match(e.get("field") or "") for e in errors):
            return PermanentSendError(text, code=str(status), suppress_reason="invalid_address")
        return PermanentSendError(text, code=str(status))
    if isinstance(exc, urllib.error.URLError):  # connecting or writing: SendGrid has nothing
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return TransientSendError("SendGrid timed out while connecting", code=CONNECT)
        why = f"{type(reason).__name__}: {reason}" if isinstance(reason, OSError) else reason
        return TransientSendError(clean(f"cannot reach SendGrid: {why}"), code=CONNECT)
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        return AmbiguousSendError(
            "SendGrid did not answer in time: it may have accepted the message", code=TIMEOUT
        )
    if isinstance(exc, OSError | http.client.HTTPException):
        return AmbiguousSendError(
            clean(
                f"the connection to SendGrid broke after the request was sent "
                f"({type(exc).__name__}: {exc}): it may have accepted the message"
            ),
            code=NETWORK,
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


# A kept-alive connection idle longer than this is not reused: servers close idle
# connections after a few seconds, and one closed while our request is on its
# way would turn a sure "not sent" into an ambiguous one.
KEEPALIVE_IDLE_SECONDS = 4.0


class _Answer:
    """What python_http_client.Response reads from a urllib response."""

    def __init__(self, status: int, body: bytes, headers: http.client.HTTPMessage) -> None:
        self._status, self._body, self._headers = status, body, headers

    def getcode(self) -> int:
        return self._status

    def read(self) -> bytes:
        return self._body

    def info(self) -> http.client.HTTPMessage:
        return self._headers


class KeptAlive:
    """A urllib-style ``open(request, timeout)`` over one kept-alive
    ``http.client`` connection (one per thread: not thread-safe)."""

    def __init__(self) -> None:
        self._conn: http.client.HTTPConnection | None = None
        self._origin: tuple[str, str] | None = None
        self._idle_since = 0.0

    def open(self, request: urllib.request.Request, timeout: float | None = None) -> _Answer:
        url = urlsplit(request.full_url)
        conn = self._connection(url.scheme, url.netloc, timeout)
        path = url.path + (f"?{url.query}" if url.query else "")
        try:
            if conn.sock is None:
                conn.connect()
                # http.client writes the headers and the body separately: without
                # this, Nagle holds the body back until the headers are ACKed, and
                # on a kept-alive connection that ACK is delayed (40 ms a request).
                sock: Any = conn.sock
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.request(request.get_method(), path, request.data, dict(request.header_items()))
        except OSError as exc:  # connecting or writing: the request did not get through
            self.close()
            raise urllib.error.URLError(exc) from None
        try:
            response = conn.getresponse()
            body = response.read()
        except BaseException:  # after the request was written: left to the caller as is
            self.close()
            raise
        if response.will_close:
            self.close()
        self._idle_since = time.monotonic()
        if response.status >= 400:
            raise urllib.error.HTTPError(
                request.full_url, response.status, response.reason, response.msg, io.BytesIO(body)
            )
        return _Answer(response.status, body, response.msg)

    def _connection(
        self, scheme: str, netloc: str, timeout: float | None
    ) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and (
            self._origin != (scheme, netloc)
            or time.monotonic() - self._idle_since > KEEPALIVE_IDLE_SECONDS
            or not _idle_and_open(conn)
        ):
            self.close()
            conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = self._conn = cls(netloc, timeout=timeout)
            self._origin = (scheme, netloc)
        elif conn.sock is not None:
            conn.sock.settimeout(timeout)
        conn.timeout = timeout
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    __del__ = close  # a channel nobody closed does not leak its sockets


def _idle_and_open(conn: http.client.HTTPConnection) -> bool:
    """False when the server closed the connection (or sent something unasked):
    an idle connection that has become readable cannot take another request."""
    if conn.sock is None:
        return True  # nothing opened yet
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return not poller.poll(0)


class _PerThread(threading.local):
    endpoint: Any = None  # the SDK's client.mail.send
    url: str = ""
    transport: KeptAlive | None = None


class SendGridEmailChannel:
    """The ``sendgrid`` email channel; safe to share between worker threads."""

    provider = "sendgrid"
    kind: ChannelKind = "email"

    def __init__(self, settings: SendGridChannel, api_key: str) -> None:
        self.settings = settings
        self._api_key = api_key
        self._host = settings.api_host.rstrip("/")
        self._local = _PerThread()
        self._lock = threading.Lock()
        self._opened: list[KeptAlive] = []
        host = urlsplit(self._host).hostname or ""
        self._direct = not urllib.request.getproxies() or bool(urllib.request.proxy_bypass(host))

    @classmethod
    def from_config(cls, config: Config) -> SendGridEmailChannel:
        return cls(config.channels.sendgrid, config.secret("SENDGRID_API_KEY"))

    def __repr__(self) -> str:  # never show the key
        return f"<SendGridEmailChannel host={self._host!r}>"

    def _local_endpoint(self) -> _PerThread:
        """This thread's ``client.mail.send`` (and transport). Built once: each
        attribute of the SDK's chain constructs a new ``Client``, and the
        endpoint holds no state between calls (its headers are fixed here,
        before the first request)."""
        local = self._local
        if local.endpoint is None:
            endpoint = SendGridAPIClient(self._api_key, host=self._host).client.mail.send
            # Set once so the SDK's setdefault() never mutates the dict mid-request.
            endpoint.request_headers["Content-Type"] = "application/json"
            local.endpoint, local.url = endpoint, endpoint._build_url(None)
            if self._direct:
                local.transport = KeptAlive()
                with self._lock:
                    self._opened.append(local.transport)
        return local

    def send(self, message: Outgoing) -> SendResult:
        payload = build_mail_payload(message, self.settings)
        local = self._local_endpoint()
        endpoint, timeout = local.endpoint, self.settings.timeout
        try:
            if local.transport is None:  # behind a proxy: the SDK's urllib transport
                response = endpoint.post(request_body=payload, timeout=timeout)
            else:  # what post() does, without the urllib opener it builds and we never use
                request = urllib.request.Request(
                    local.url,
                    data=json.dumps(payload).encode("utf-8"),
                    headers=endpoint.request_headers,
                    method="POST",
                )
                response = Response(
                    endpoint._make_request(local.transport, request, timeout=timeout)
                )
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            raise map_sendgrid_error(exc, api_key=self._api_key, to=message.to) from None
        provider_id = response.headers.get("X-Message-Id") if response.headers else None
        return SendResult(provider=self.provider, provider_id=provider_id)

    def close(self) -> None:
        """Close every thread's kept-alive connection."""
        with self._lock:
            opened, self._opened = self._opened, []
        for transport in opened:
            transport.close()
