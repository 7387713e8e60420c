"""``POST /webhooks/sendgrid`` with batches signed by a real ECDSA key pair."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update

from engage.config import Config
from engage.db.models import Customer, Interaction, Message, WebhookEvent
from engage.web import create_app
from engage.web.routes import sendgrid as sendgrid_route

from .helpers import NOW, add_customer, add_message, make_config
from .webtools import SendGridSigner, feedback_state, serving


@pytest.fixture
def signer() -> SendGridSigner:
    return SendGridSigner()


@pytest.fixture
def config(tmp_path: Path, db_url: str, signer: SendGridSigner) -> Config:
    return make_config(
        tmp_path, database_url=db_url, secrets={"SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_key}
    )


@pytest.fixture
def client(config: Config, engine: Engine) -> Iterator[httpx.Client]:
    with serving(create_app(config)) as url, httpx.Client(base_url=url) as c:
        yield c


def event(kind: str, mid: int | None, n: int, **kw: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "email": kw.pop("email", "x@example.com"),
        "timestamp": int(NOW.timestamp()) + n,
        "event": kind,
        "sg_event_id": f"evt-{kind}-{n}",
        "sg_message_id": f"provider-{mid}.filter0001",
        "category": ["engage", "winback-30d"],
    }
    if mid is not None:
        e["engage_message_id"] = str(mid)
    e.update(kw)
    return e


def snapshot(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            **feedback_state(conn, Customer.email_opt_in),
            "interactions": conn.execute(
                select(
                    Interaction.customer_id,
                    Interaction.kind,
                    Interaction.occurred_at,
                    Interaction.attributes,
                    Interaction.external_id,
                ).order_by(Interaction.external_id)
            ).all(),
            "events": conn.execute(select(WebhookEvent.event_id).order_by(WebhookEvent.event_id))
            .scalars()
            .all(),
        }


def outbox(engine: Engine, n: int) -> list[int]:
    """``n`` sent emails to customers c0..c{n-1}."""
    ids = []
    for i in range(n):
        add_customer(engine, f"c{i}")
        ids.append(
            add_message(
                engine,
                f"c{i}",
                status="sent",
                address=f"c{i}@example.com",
                provider="sendgrid",
                provider_id=f"provider-{i}",
                sent_at=NOW,
            )
        )
    return ids


def test_a_signed_batch_updates_states_suppressions_and_interactions(
    client: httpx.Client, engine: Engine, signer: SendGridSigner
) -> None:
    m = outbox(engine, 9)
    batch = [
        event("delivered", m[0], 1),
        event(
            "bounce",
            m[1],
            2,
            email="c1@example.com",
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 mailbox unavailable",
        ),
        event("bounce", m[2], 3, email="c2@example.com", type="blocked", reason="try later"),
        event("dropped", m[3], 4, email="c3@example.com", reason="Bounced Address"),
        event("delivered", m[4], 5),
        event("spamreport", m[4], 6, email="c4@example.com"),
        event("delivered", m[5], 7),
        event("unsubscribe", m[5], 8, email="C5@Example.com"),
        event("open", m[6], 9),
        event("click", m[7], 10, url="https://shop.test/?utm_source=engage"),
        event("processed", m[8], 11),
        event("delivered", 999_999, 12),  # not one of ours
        event("click", None, 13),  # no custom args: another system's email
        "not an event",
    ]
    r = signer.post(client, batch)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "received": 14,
        "applied": 9,
        "ignored": 2,
        "unknown_message": 2,
        "invalid": 1,
    }
    s = snapshot(engine)
    status = {mid: (st, err) for mid, st, err in s["messages"]}
    assert status[m[0]] == ("delivered", None)
    assert status[m[1]] == ("bounced", "bounced (SendGrid): 5.1.1 550 5.1.1 mailbox unavailable")
    assert status[m[2]] == ("sent", None)  # a soft 'blocked' bounce only records
    assert status[m[3]] == ("failed", "dropped by SendGrid: Bounced Address")
    assert status[m[4]][0] == status[m[5]][0] == "delivered"
    assert status[m[6]][0] == status[m[7]][0] == status[m[8]][0] == "sent"
    assert [tuple(x) for x in s["suppressions"]] == [
        ("email", "c1@example.com", "c1", "invalid_address", "winback-30d", m[1]),
        ("email", "c3@example.com", "c3", "invalid_address", "winback-30d", m[3]),
        ("email", "c4@example.com", "c4", "spam_report", "winback-30d", m[4]),
        ("email", "c5@example.com", "c5", "unsubscribe", "winback-30d", m[5]),
    ]
    consent = dict(s["consent"])
    assert not consent["c4"] and not consent["c5"]
    assert all(consent[f"c{i}"] for i in (0, 1, 2, 3, 6, 7, 8))
    assert [(i[0], i[1], i[2], i[3]) for i in s["interactions"]] == [
        (
            "c7",
            "email_click",
            NOW.replace(second=10),
            {
                "campaign": "winback-30d",
                "message_id": m[7],
                "url": "https://shop.test/?utm_source=engage",
            },
        ),
        (
            "c6",
            "email_open",
            NOW.replace(second=9),
            {"campaign": "winback-30d", "message_id": m[6]},
        ),
    ]
    assert len(s["events"]) == 13  # every well-formed event is recorded as seen

    # The same batch again (SendGrid redelivers): nothing changes.
    again = signer.post(client, batch)
    assert again.status_code == 200
    assert again.json() == {"received": 14, "duplicate": 13, "invalid": 1}
    assert snapshot(engine) == s


def test_states_never_move_backwards(
    client: httpx.Client, engine: Engine, signer: SendGridSigner
) -> None:
    m = outbox(engine, 3)
    # bounce first, a late delivered after it
    assert signer.post(client, [event("bounce", m[0], 1, type="bounce")]).status_code == 200
    r = signer.post(client, [event("delivered", m[0], 2)])
    assert r.json() == {"received": 1, "stale": 1}
    # within one batch, out of order: delivered after bounce still ends bounced
    signer.post(client, [event("bounce", m[1], 3, type="bounce"), event("delivered", m[1], 4)])
    # a dropped after delivered does not fail a delivered email
    signer.post(client, [event("delivered", m[2], 5)])
    assert signer.post(client, [event("dropped", m[2], 6, reason="Spam Content")]).json() == {
        "received": 1,
        "stale": 1,
    }
    status = {mid: st for mid, st, _ in snapshot(engine)["messages"]}
    assert [status[i] for i in m] == ["bounced", "bounced", "delivered"]


@pytest.mark.parametrize(
    "tamper",
    ["wrong_key", "body_changed", "stale", "future", "no_signature", "not_base64", "garbage_der"],
)
def test_bad_signature_or_stale_timestamp_changes_nothing(
    client: httpx.Client, engine: Engine, signer: SendGridSigner, tamper: str
) -> None:
    m = outbox(engine, 1)
    before = snapshot(engine)
    body = json.dumps([event("bounce", m[0], 1, type="bounce")]).encode()
    headers = signer.headers(body)
    if tamper == "wrong_key":
        headers = SendGridSigner().headers(body)
    elif tamper == "body_changed":
        body = body.replace(b"bounce", b"delivered", 1)
    elif tamper == "stale":
        headers = signer.headers(body, timestamp=int(time.time()) - 11 * 60)
    elif tamper == "future":
        headers = signer.headers(body, timestamp=int(time.time()) + 11 * 60)
    elif tamper == "no_signature":
        del headers["X-Twilio-Email-Event-Webhook-Signature"]
    elif tamper == "not_base64":
        headers["X-Twilio-Email-Event-Webhook-Signature"] = "%%%not base64%%%"
    elif tamper == "garbage_der":
        headers["X-Twilio-Email-Event-Webhook-Signature"] = "AAAA"
    r = client.post("/webhooks/sendgrid", content=body, headers=headers)
    assert r.status_code == (401 if tamper == "no_signature" else 403), r.text
    assert r.json()["error"] in ("missing_signature", "invalid_signature", "stale_timestamp")
    assert snapshot(engine) == before


def test_timestamp_inside_the_tolerance_is_accepted(
    client: httpx.Client, engine: Engine, signer: SendGridSigner
) -> None:
    m = outbox(engine, 1)
    r = signer.post(client, [event("delivered", m[0], 1)], timestamp=int(time.time()) - 9 * 60)
    assert r.status_code == 200 and r.json()["applied"] == 1


def test_signed_but_malformed_bodies_are_400(
    client: httpx.Client, engine: Engine, signer: SendGridSigner
) -> None:
    before = snapshot(engine)
    for body in (b"{not json", b'{"event": "delivered"}'):
        r = client.post("/webhooks/sendgrid", content=body, headers=signer.headers(body))
        assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    headers = signer.headers(b"[]") | {"Content-Type": "text/plain"}
    assert client.post("/webhooks/sendgrid", content=b"[]", headers=headers).status_code == 415
    assert snapshot(engine) == before


def test_events_for_a_message_still_sending_wait_for_the_provider_retry(
    client: httpx.Client, engine: Engine, signer: SendGridSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sendgrid_route, "SETTLE_SECONDS", 0.05)
    m = outbox(engine, 2)
    with engine.begin() as conn:
        conn.execute(update(Message).where(Message.id == m[1]).values(status="sending"))
    # processed and open need no recorded send: only the state change waits
    batch = [event("delivered", m[0], 1), event("delivered", m[1], 2),
             event("processed", m[1], 3), event("open", m[1], 4)]
    r = signer.post(client, batch)
    assert r.status_code == 503 and r.headers["retry-after"] == "60"
    assert r.json() == {"received": 4, "applied": 2, "ignored": 1, "deferred": 1}
    s = snapshot(engine)
    assert [st for _, st, _ in s["messages"]] == ["delivered", "sending"]
    # the deferred one is not recorded as seen
    assert s["events"] == ["evt-delivered-1", "evt-open-4", "evt-processed-3"]
    # dispatch records the send; SendGrid retries the batch
    with engine.begin() as conn:
        conn.execute(update(Message).where(Message.id == m[1]).values(status="sent"))
    r = signer.post(client, batch)
    assert r.status_code == 200 and r.json() == {"received": 4, "applied": 1, "duplicate": 3}
    assert [st for _, st, _ in snapshot(engine)["messages"]] == ["delivered", "delivered"]


def test_processed_settles_a_send_whose_outcome_was_lost(
    client: httpx.Client, engine: Engine, signer: SendGridSigner
) -> None:
    m = outbox(engine, 2)
    with engine.begin() as conn:
        conn.execute(update(Message).where(Message.id == m[0]).values(status="unknown"))
    r = signer.post(client, [event("processed", m[0], 1), event("processed", m[1], 2)])
    assert r.json() == {"received": 2, "applied": 1, "ignored": 1}
    assert [st for _, st, _ in snapshot(engine)["messages"]] == ["sent", "sent"]


def test_metrics_count_events_by_kind_and_outcome(
    client: httpx.Client, engine: Engine, signer: SendGridSigner
) -> None:
    m = outbox(engine, 2)
    batch = [event("delivered", m[0], 1), event("open", m[1], 2), event("weird", m[1], 3)]
    signer.post(client, batch)
    signer.post(client, batch)
    text = client.get("/metrics").text
    for line in (
        'engage_webhook_events_total{kind="delivered",outcome="applied",provider="sendgrid"} 1.0',
        'engage_webhook_events_total{kind="open",outcome="applied",provider="sendgrid"} 1.0',
        'engage_webhook_events_total{kind="other",outcome="ignored",provider="sendgrid"} 1.0',
        'engage_webhook_events_total{kind="delivered",outcome="duplicate",provider="sendgrid"} 1.0',
        'engage_messages{channel="email",status="delivered"} 1.0',
        'engage_messages{channel="email",status="sent"} 1.0',
    ):
        assert line in text, line
    assert 'route="/webhooks/sendgrid",status="200"' in text
