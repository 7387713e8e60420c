"""What the routes share, built once per app from config and the environment.

Each endpoint group needs one secret; without it the group is disabled (it
answers 404 ``endpoint_disabled``) and ``engage serve`` says so at start. A
secret that is present but unusable (a public key that does not parse, a
token too short to be safe) is a ``ConfigError``: the server does not start.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from sqlalchemy import Engine, event

from ..config import Config
from ..db import make_engine
from ..errors import ConfigError
from ..unsubscribe import make_token
from .metrics import Metrics

log = logging.getLogger("engage.web")

MIN_API_TOKEN = 16
EXAMPLE_PUBLIC_URL = Config.model_fields["public_url"].default
# Database work runs in threads, at most this many at once per process: the
# pool holds as many connections, so a burst queues on the event loop
# instead of timing out waiting for a connection.
DB_CONCURRENCY = 15
T = TypeVar("T")
_PEM_LINES = re.compile(r"-----(BEGIN|END) PUBLIC KEY-----|\s+")


@dataclass(frozen=True)
class Group:
    """A set of endpoints that one secret turns on."""

    name: str
    paths: tuple[str, ...]
    secret: str  # the environment variable it needs


GROUPS = (
    Group("unsubscribe", ("GET|POST /u/{token}",), "ENGAGE_SECRET_KEY"),
    Group("sendgrid", ("POST /webhooks/sendgrid",), "SENDGRID_WEBHOOK_PUBLIC_KEY"),
    Group(
        "twilio",
        ("POST /webhooks/twilio/status", "POST /webhooks/twilio/inbound"),
        "TWILIO_AUTH_TOKEN",
    ),
    Group(
        "ingest",
        ("POST /v1/customers", "POST /v1/interactions", "POST /v1/events", "POST /v1/points"),
        "ENGAGE_API_TOKEN",
    ),
)


@dataclass
class WebContext:
    config: Config
    engine: Engine
    metrics: Metrics
    secret_key: str | None = None
    sendgrid_key: object | None = None  # an EllipticCurvePublicKey
    twilio_token: str | None = None
    api_token: bytes | None = None
    enabled: dict[str, bool] = field(default_factory=dict)
    _limiter: CapacityLimiter | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (blocking database work) in a worker thread."""
        if self._limiter is None:  # made inside the event loop that uses it
            self._limiter = CapacityLimiter(DB_CONCURRENCY)
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)


def sendgrid_public_key(text: str) -> object:
    """The ECDSA P-256 public key SendGrid shows as the "Verification Key"
    (base64 DER; PEM armour and line breaks are tolerated)."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    body = _PEM_LINES.sub("", text)
    try:
        key = EventWebhook().convert_public_key_to_ecdsa(body)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA P-256 public key: paste the "
            "Verification Key shown under Settings > Mail Settings > Event Webhook"
        )
    return key


def build_context(config: Config, engine: Engine) -> WebContext:
    secrets = config.secrets
    ctx = WebContext(config, engine, Metrics(engine))
    secret = secrets.get("ENGAGE_SECRET_KEY")
    if secret:
        make_token(secret, "check", "email", "check")  # ConfigError when too short
        ctx.secret_key = secret
    public_key = secrets.get("SENDGRID_WEBHOOK_PUBLIC_KEY")
    if public_key:
        ctx.sendgrid_key = sendgrid_public_key(public_key)
    ctx.twilio_token = secrets.get("TWILIO_AUTH_TOKEN") or None
    token = secrets.get("ENGAGE_API_TOKEN")
    if token:
        if len(token) < MIN_API_TOKEN:
            raise ConfigError(f"ENGAGE_API_TOKEN must be at least {MIN_API_TOKEN} characters long")
        ctx.api_token = token.encode()
    ctx.enabled = {
        "unsubscribe": ctx.secret_key is not None,
        "sendgrid": ctx.sendgrid_key is not None,
        "twilio": ctx.twilio_token is not None,
        "ingest": ctx.api_token is not None,
    }
    return ctx


def announce(ctx: WebContext) -> None:
    """Log ``describe``'s lines (warnings as warnings): what a start says."""
    for line in describe(ctx):
        level = logging.WARNING if line.startswith("warning:") else logging.INFO
        log.log(level, line, extra={"event": "serve_endpoints"})


def describe(ctx: WebContext) -> list[str]:
    """One line per endpoint group: what is served, what is off and why."""
    lines = []
    for g in GROUPS:
        paths = ", ".join(g.paths)
        if ctx.enabled[g.name]:
            lines.append(f"enabled: {paths}")
        else:
            lines.append(f"disabled: {paths} ({g.secret} is not set)")
    lines.append("enabled: GET /healthz, GET /metrics")
    if ctx.config.public_url == EXAMPLE_PUBLIC_URL and ctx.enabled["twilio"]:
        lines.append(
            f"warning: public_url is still {EXAMPLE_PUBLIC_URL}: Twilio's signatures are "
            "checked against it, so set it to the URL Twilio calls"
        )
    return lines


def web_engine(url: str) -> Engine:
    """An engine for the HTTP side. On SQLite every transaction begins
    ``IMMEDIATE``: requests read then write, and a deferred transaction whose
    snapshot went stale while another process wrote fails at once with
    "database is locked" instead of waiting its turn."""
    if url.startswith(("postgres://", "postgresql")):
        engine = make_engine(url, pool_size=10, max_overflow=DB_CONCURRENCY - 10)
    else:
        engine = make_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_conn: object, _record: object) -> None:
            dbapi_conn.isolation_level = None  # type: ignore[attr-defined]

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: object) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # type: ignore[attr-defined]

    return engine
