"""Running the real app under uvicorn on 127.0.0.1, and signing requests the
way SendGrid and Twilio do."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, select
from starlette.applications import Starlette
from twilio.request_validator import RequestValidator

from engage.db.models import Customer, Message, Suppression

TWILIO_TOKEN = "twilio-auth-token-for-tests"
API_TOKEN = "api-token-0123456789abcdef"
PUBLIC_URL = "https://engage.shop.test"


def feedback_state(conn: Connection, *consent: Any) -> dict[str, Any]:
    """What provider feedback or an unsubscribe may change: message states,
    suppressions and the ``consent`` columns of every customer (a test
    compares these before and after)."""
    return {
        "messages": conn.execute(
            select(Message.id, Message.status, Message.error).order_by(Message.id)
        ).all(),
        "suppressions": conn.execute(
            select(
                Suppression.channel,
                Suppression.address,
                Suppression.customer_id,
                Suppression.reason,
                Suppression.campaign,
                Suppression.message_id,
            ).order_by(Suppression.address)
        ).all(),
        "consent": conn.execute(select(Customer.id, *consent).order_by(Customer.id)).all(),
    }


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


class SendGridSigner:
    """An ECDSA P-256 key pair, as SendGrid's Signed Event Webhook uses."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()  # SendGrid's "Verification Key"

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }

    def post(self, client: httpx.Client, events: list[Any], **kw: Any) -> httpx.Response:
        body = json.dumps(events).encode()
        return client.post("/webhooks/sendgrid", content=body, headers=self.headers(body, **kw))


def twilio_post(
    client: httpx.Client,
    path: str,
    params: Mapping[str, str],
    *,
    token: str = TWILIO_TOKEN,
    public_url: str = PUBLIC_URL,
) -> httpx.Response:
    """POST a form as Twilio does, signed for ``public_url`` + ``path``."""
    signature = RequestValidator(token).compute_signature(public_url + path, dict(params))
    return client.post(path, data=dict(params), headers={"X-Twilio-Signature": signature})
