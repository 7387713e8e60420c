"""Fake SendGrid and Twilio servers for tests that drive the real SDKs.

Each fake is a small threaded HTTP server on 127.0.0.1 (an ephemeral port)
speaking just enough of the provider's API for the official SDK: SendGrid's
``POST /v3/mail/send`` and Twilio's ``POST /2010-04-01/Accounts/{sid}/Messages.json``.
Point engage at one with ``channels.sendgrid.api_host: <fake.url>`` or
``channels.twilio.api_base: <fake.url>``.

Every request is recorded (method, path, headers, parsed body, monotonic
timestamp, the client's address). Responses can be scripted, first in first
out, e.g. ``sg.script(429, retry_after=2)``, ``sg.script(500, times=3)``,
``sg.script("hang", seconds=5)`` (answer nothing for that long, then drop the
connection), ``sg.script("drop")`` (read the request, hang up at once),
``sg.script(202, delay=2)`` (answer normally, two seconds late),
``tw.script(400, code=21610)``. With nothing scripted, requests that are well
formed succeed the way the provider would answer them, after ``latency``
seconds (default 0: at once). Connections are kept alive, like the real
APIs', until the client closes them or stays idle for ``idle_timeout``
seconds (default: forever).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeSendGrid", "FakeTwilio", "Recorded", "Reply"]


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON (SendGrid), form fields (Twilio), else raw text
    raw: bytes
    at: float  # time.monotonic() when the request was read
    status: int | None = None  # what the fake answered; None when it hung up
    provider_id: str | None = None  # X-Message-Id or Twilio SID handed out
    peer: str = ""  # the client's host:port: requests over one connection share it


@dataclass
class Reply:
    """A scripted answer; ``status="hang"`` answers nothing for ``seconds``,
    ``"drop"`` hangs up at once; ``delay`` answers that many seconds late."""

    status: int | Literal["hang", "drop"]
    retry_after: float | None = None
    code: int | None = None  # Twilio error code
    message: str | None = None
    field: str | None = None  # SendGrid error "field"
    seconds: float = 5.0
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: Any = None  # a JSON body to answer instead of the provider's usual error
    delay: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops connections when 8+ client
    # threads connect at once (they retry ~1 s later and distort any timing);
    # three dispatch processes open up to 768 at once.
    request_queue_size = 1024
    fake: _FakeBase


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs offer
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls on kept-alive connections
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # quiet: tests read .requests instead

    def setup(self) -> None:
        super().setup()
        if self.server.fake.idle_timeout is not None:  # an idle kept-alive connection ends
            self.connection.settimeout(self.server.fake.idle_timeout)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.fake._dispatch(self, raw)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _FakeBase:
    """Server lifecycle, request log and response script shared by both fakes."""

    def __init__(
        self, port: int = 0, *, latency: float = 0.0, idle_timeout: float | None = None
    ) -> None:
        self.port = port  # 0: any free port
        self.latency = latency  # seconds before every unscripted answer
        self.idle_timeout = idle_timeout  # close a kept-alive connection idle this long
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()  # wakes hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first (use it as a context manager)"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- recording and scripting ---------------------------------------------
    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._script.clear()

    def script(
        self,
        status: int | Literal["hang", "drop"],
        *,
        times: int = 1,
        retry_after: float | None = None,
        code: int | None = None,
        message: str | None = None,
        field: str | None = None,
        seconds: float = 5.0,
        headers: dict[str, str] | None = None,
        body: Any = None,
        delay: float = 0.0,
    ) -> _FakeBase:
        """Queue ``times`` identical answers for the next requests."""
        reply = Reply(
            status, retry_after, code, message, field, seconds, dict(headers or {}), body, delay
        )
        with self._lock:
            self._script.extend([reply] * times)
        return self

    def _next_scripted(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self._requests.append(rec)

    # -- request handling ---------------------------------------------------
    def _dispatch(self, h: _Handler, raw: bytes) -> None:
        at = time.monotonic()
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = urlsplit(h.path).path
        body = self._parse_body(headers, raw)
        peer = f"{h.client_address[0]}:{h.client_address[1]}"
        # Credentials first, as the real APIs do; a refused request uses no scripted answer.
        denied = self._denied(headers)
        reply = None if denied else self._next_scripted()
        if reply is not None and reply.status in ("hang", "drop"):
            self._record(Recorded(h.command, path, headers, body, raw, at, peer=peer))
            if reply.status == "hang":
                self._closing.wait(reply.seconds)
            h.close_connection = True  # hang up without a word
            return
        wait = reply.delay if reply is not None else self.latency
        if wait > 0:
            self._closing.wait(wait)
        out_headers: dict[str, str] = {}
        if denied is not None:
            status, payload, provider_id = 401, denied, None
        else:
            status, out_headers, payload, provider_id = self._answer(
                h.command, path, headers, body, reply
            )
        self._record(Recorded(h.command, path, headers, body, raw, at, status, provider_id, peer))
        data = json.dumps(payload).encode() if payload is not None else b""
        h.send_response(status)
        if payload is not None:
            h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for name, value in out_headers.items():
            h.send_header(name, value)
        h.end_headers()  # flushes the status line and headers
        if data:
            h.wfile.write(data)

    def _parse_body(self, headers: dict[str, str], raw: bytes) -> Any:
        ctype = headers.get("content-type", "")
        text = raw.decode("utf-8", "replace")
        if "json" in ctype:
            try:
                return json.loads(text) if text else None
            except json.JSONDecodeError:
                return text
        if "x-www-form-urlencoded" in ctype:
            return dict(parse_qsl(text, keep_blank_values=True))
        return text

    def _denied(self, headers: dict[str, str]) -> Any:
        """The 401 error body when the credentials are wrong, else None."""
        raise NotImplementedError

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any, reply: Reply | None
    ) -> tuple[int, dict[str, str], Any, str | None]:
        raise NotImplementedError

    @staticmethod
    def _reply_headers(reply: Reply) -> dict[str, str]:
        out = dict(reply.headers)
        if reply.retry_after is not None:
            out["Retry-After"] = f"{reply.retry_after:g}"
        return out


class FakeSendGrid(_FakeBase):
    """``POST /v3/mail/send`` answering 202 with an ``X-Message-Id``, like SendGrid v3."""

    def __init__(self, api_key: str = "SG.test-key", port: int = 0, **kw: Any) -> None:
        super().__init__(port, **kw)
        self.api_key = api_key

    def __enter__(self) -> FakeSendGrid:
        self.start()
        return self

    @staticmethod
    def _errors(message: str, field: str | None = None) -> dict[str, Any]:
        return {"errors": [{"message": message, "field": field, "help": None}]}

    def _denied(self, headers: dict[str, str]) -> Any:
        if headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        return self._errors("The provided authorization grant is invalid, expired, or revoked")

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any, reply: Reply | None
    ) -> tuple[int, dict[str, str], Any, str | None]:
        if reply is not None:
            assert isinstance(reply.status, int)
            default = {429: "too many requests", 500: "internal error"}.get(
                reply.status, "scripted error"
            )
            if 200 <= reply.status < 300:
                msg_id = _sg_message_id()
                out = {"X-Message-Id": msg_id, **self._reply_headers(reply)}
                return reply.status, out, None, msg_id
            error = reply.body or self._errors(reply.message or default, reply.field)
            return reply.status, self._reply_headers(reply), error, None
        if (method, path) != ("POST", "/v3/mail/send"):
            return 404, {}, self._errors("not found"), None
        problem = _check_mail(body)
        if problem is not None:
            return 400, {}, self._errors(*problem), None
        msg_id = _sg_message_id()
        return 202, {"X-Message-Id": msg_id}, None, msg_id


def _sg_message_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")[:22]


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _check_mail(body: Any) -> tuple[str, str | None] | None:
    """The first thing SendGrid would reject in a mail/send body, as (message, field)."""
    if not isinstance(body, dict):
        return "Bad Request", None
    pers = body.get("personalizations")
    if not isinstance(pers, list) or not pers:
        return "The personalizations field is required.", "personalizations"
    for i, p in enumerate(pers):
        tos = p.get("to") if isinstance(p, dict) else None
        if not isinstance(tos, list) or not tos:
            return "The to array is required.", f"personalizations.{i}.to"
        for j, to in enumerate(tos):
            if not isinstance(to, dict) or not _EMAIL.match(str(to.get("email", ""))):
                return "Does not contain a valid address.", f"personalizations.{i}.to.{j}.email"
    sender = body.get("from")
    if not isinstance(sender, dict) or not _EMAIL.match(str(sender.get("email", ""))):
        return "The from email does not contain a valid address.", "from.email"
    if not body.get("subject") and not all(p.get("subject") for p in pers):
        return "The subject is required.", "subject"
    content = body.get("content")
    if not isinstance(content, list) or not content:
        return "The content field is required.", "content"
    if any(not isinstance(c, dict) or not c.get("value") for c in content):
        return "The content value must be a string at least one character in length.", "content"
    types = [c.get("type") for c in content]
    if "text/plain" in types and types[0] != "text/plain":
        return "The text/plain content type must be first.", "content.0.type"
    return None


_TWILIO_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_TWILIO_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    21211: "The 'To' number is not a valid phone number.",
    21602: "Message body is required.",
    21604: "A 'From' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    30001: "Queue overflow",
}


class FakeTwilio(_FakeBase):
    """``POST /2010-04-01/Accounts/{sid}/Messages.json`` answering 201 with an ``SM...`` SID."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "test-token",
        port: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(port, **kw)
        self.account_sid = account_sid
        self.auth_token = auth_token

    def __enter__(self) -> FakeTwilio:
        self.start()
        return self

    @staticmethod
    def _error(status: int, code: int, message: str | None = None) -> dict[str, Any]:
        return {
            "code": code,
            "message": message or _TWILIO_MESSAGES.get(code, "Error"),
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }

    def _denied(self, headers: dict[str, str]) -> Any:
        expected = (
            "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        )
        return None if headers.get("authorization") == expected else self._error(401, 20003)

    def _answer(
        self, method: str, path: str, headers: dict[str, str], body: Any, reply: Reply | None
    ) -> tuple[int, dict[str, str], Any, str | None]:
        if reply is not None:
            assert isinstance(reply.status, int)
            if 200 <= reply.status < 300:
                return self._created(body, reply.status, self._reply_headers(reply))
            code = reply.code or {429: 20429, 404: 20404}.get(reply.status, reply.status)
            error = reply.body or self._error(reply.status, code, reply.message)
            return reply.status, self._reply_headers(reply), error, None
        m = _TWILIO_PATH.match(path)
        if method != "POST" or m is None or m["sid"] != self.account_sid:
            return 404, {}, self._error(404, 20404), None
        form = body if isinstance(body, dict) else {}
        if not _E164.match(form.get("To", "")):
            return 400, {}, self._error(400, 21211), None
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return 400, {}, self._error(400, 21604), None
        if not form.get("Body") and not form.get("MediaUrl"):
            return 400, {}, self._error(400, 21602), None
        return self._created(form, 201, {})

    def _created(
        self, form: Any, status: int, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any, str | None]:
        form = form if isinstance(form, dict) else {}
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True)
        payload = {
            "sid": sid,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "status": "queued",
            "subresource_uris": {},
            "to": form.get("To"),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        return status, headers, payload, sid
