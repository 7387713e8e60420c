"""Twilio status callbacks and inbound SMS, signed with the SDK's RequestValidator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select, update
from twilio.request_validator import RequestValidator

from engage.config import Config
from engage.db.models import Customer, Interaction, Message
from engage.web import create_app
from engage.web.feedback import keyword
from engage.web.routes import twilio as twilio_route

from .helpers import NOW, add_customer, add_message, make_config
from .webtools import PUBLIC_URL, TWILIO_TOKEN, feedback_state, serving, twilio_post

ANN = "+12025550123"


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Config:
    return make_config(
        tmp_path,
        database_url=db_url,
        public_url=PUBLIC_URL,
        secrets={"TWILIO_AUTH_TOKEN": TWILIO_TOKEN},
    )


@pytest.fixture
def client(config: Config, engine: Engine) -> Iterator[httpx.Client]:
    with serving(create_app(config)) as url, httpx.Client(base_url=url) as c:
        yield c


def snapshot(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            **feedback_state(conn, Customer.sms_opt_in),
            "interactions": conn.execute(
                select(Interaction.customer_id, Interaction.kind, Interaction.attributes).order_by(
                    Interaction.id
                )
            ).all(),
        }


def sms(engine: Engine, n: int) -> list[int]:
    ids = []
    for i in range(n):
        phone = f"+1202555{i:04d}"
        add_customer(engine, f"c{i}", phone=phone, sms_opt_in=True)
        ids.append(
            add_message(
                engine,
                f"c{i}",
                channel="sms",
                status="sent",
                address=phone,
                provider="twilio",
                provider_id=f"SM{i:032d}",
                sent_at=NOW,
            )
        )
    return ids


def status(client: httpx.Client, i: int, state: str, code: str | None = None) -> httpx.Response:
    params = {
        "MessageSid": f"SM{i:032d}",
        "MessageStatus": state,
        "To": f"+1202555{i:04d}",
        "From": "+15005550006",
        "AccountSid": "AC" + "0" * 32,
    }
    if code:
        params["ErrorCode"] = code
    return twilio_post(client, "/webhooks/twilio/status", params)


def test_status_callbacks_update_states_and_suppress_dead_numbers(
    client: httpx.Client, engine: Engine
) -> None:
    m = sms(engine, 5)
    for i, state, code in [
        (0, "delivered", None),
        (1, "undelivered", "30005"),
        (2, "undelivered", "30006"),
        (3, "undelivered", "30003"),
        (4, "failed", "30007"),
    ]:
        r = status(client, i, state, code)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/xml")
        assert "<Response></Response>" in r.text
    s = snapshot(engine)
    assert [(st, err) for _, st, err in s["messages"]] == [
        ("delivered", None),
        ("undelivered", "Twilio undelivered: error 30005"),
        ("undelivered", "Twilio undelivered: error 30006"),
        ("undelivered", "Twilio undelivered: error 30003"),  # recorded, not suppressed
        ("failed", "Twilio failed: error 30007"),
    ]
    assert [tuple(x) for x in s["suppressions"]] == [
        ("sms", "+12025550001", "c1", "invalid_address", "winback-30d", m[1]),
        ("sms", "+12025550002", "c2", "invalid_address", "winback-30d", m[2]),
    ]
    # a late 'delivered' never undoes 'undelivered'; a repeat changes nothing
    status(client, 1, "delivered")
    status(client, 0, "delivered")
    assert snapshot(engine) == s


def test_queued_and_sent_receipts_only_record(client: httpx.Client, engine: Engine) -> None:
    sms(engine, 1)
    before = snapshot(engine)
    for state in ("queued", "sending", "sent"):
        assert status(client, 0, state).status_code == 200
    assert snapshot(engine) == before


def test_wrong_signature_changes_nothing(client: httpx.Client, engine: Engine) -> None:
    sms(engine, 1)
    add_customer(engine, "ann", phone=ANN, sms_opt_in=True)
    before = snapshot(engine)
    params = {
        "MessageSid": "SM" + "0" * 32,
        "MessageStatus": "undelivered",
        "ErrorCode": "30005",
        "To": "+12025550000",
    }
    inbound = {"MessageSid": "SMin1", "From": ANN, "Body": "STOP"}
    cases = [
        twilio_post(client, "/webhooks/twilio/status", params, token="another-auth-token"),
        twilio_post(client, "/webhooks/twilio/inbound", inbound, token="another-auth-token"),
        # signed for the URL the proxy forwarded, not the public one Twilio called
        twilio_post(client, "/webhooks/twilio/inbound", inbound, public_url=str(client.base_url)),
        client.post("/webhooks/twilio/inbound", data=inbound),  # no signature at all
        client.post("/webhooks/twilio/inbound", data=inbound, headers={"X-Twilio-Signature": "x"}),
    ]
    # a field changed after signing
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(
        PUBLIC_URL + "/webhooks/twilio/inbound", {**inbound, "Body": "hello"}
    )
    cases.append(
        client.post(
            "/webhooks/twilio/inbound", data=inbound, headers={"X-Twilio-Signature": signature}
        )
    )
    assert [r.status_code for r in cases] == [403, 403, 403, 401, 403, 403]
    assert all(r.json()["error"] in ("invalid_signature", "missing_signature") for r in cases)
    assert snapshot(engine) == before


def test_query_string_is_part_of_the_signed_url(client: httpx.Client, engine: Engine) -> None:
    add_customer(engine, "ann", phone=ANN, sms_opt_in=True)
    r = twilio_post(
        client,
        "/webhooks/twilio/inbound?source=main",
        {"MessageSid": "SMq", "From": ANN, "Body": "STOP"},
    )
    assert r.status_code == 200
    assert snapshot(engine)["consent"] == [("ann", False)]


def inbound(client: httpx.Client, sid: str, body: str, number: str = ANN, **kw: str) -> None:
    params = {"MessageSid": sid, "From": number, "To": "+15005550006", "Body": body, **kw}
    r = twilio_post(client, "/webhooks/twilio/inbound", params)
    assert r.status_code == 200, r.text
    assert r.text == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def test_stop_and_start_round_trip_sms_opt_in(client: httpx.Client, engine: Engine) -> None:
    add_customer(engine, "ann", phone=ANN, sms_opt_in=True)
    mid = add_message(
        engine,
        "ann",
        channel="sms",
        status="delivered",
        address=ANN,
        provider_id="SMout",
        sent_at=NOW - timedelta(hours=1),
        campaign="points",
    )
    inbound(client, "SM1", "  Stop. ")
    s = snapshot(engine)
    assert s["consent"] == [("ann", False)]
    assert [tuple(x) for x in s["suppressions"]] == [("sms", ANN, "ann", "sms_stop", "points", mid)]
    inbound(client, "SM2", "start")
    s = snapshot(engine)
    assert s["consent"] == [("ann", True)] and s["suppressions"] == []
    inbound(client, "SM1", "  Stop. ")  # Twilio retries an old STOP: it is not applied again
    assert snapshot(engine)["consent"] == [("ann", True)]
    for sid, word in [("SM3", "UNSUBSCRIBE"), ("SM4", "yes"), ("SM5", "quit!"), ("SM6", "UNSTOP")]:
        inbound(client, sid, word)
    s = snapshot(engine)
    assert s["consent"] == [("ann", True)] and s["suppressions"] == []
    assert s["interactions"] == []  # keywords are not replies


def test_replies_become_interactions_and_help_is_recorded(
    client: httpx.Client, engine: Engine
) -> None:
    add_customer(engine, "ann", phone=ANN, sms_opt_in=True)
    inbound(client, "SM1", "stop please")  # a sentence, not the keyword
    inbound(client, "SM2", "HELP")
    inbound(client, "SM3", "When does the sale end?")
    inbound(client, "SM3", "When does the sale end?")  # a retry: recorded once
    s = snapshot(engine)
    assert s["consent"] == [("ann", True)] and s["suppressions"] == []
    assert [(c, k, a) for c, k, a in s["interactions"]] == [
        ("ann", "sms_reply", {"body": "stop please"}),
        ("ann", "sms_help", {}),
        ("ann", "sms_reply", {"body": "When does the sale end?"}),
    ]


def test_stop_from_an_unknown_number_still_suppresses_it(
    client: httpx.Client, engine: Engine
) -> None:
    inbound(client, "SM1", "STOPALL", number="+12025559999")
    inbound(client, "SM2", "hello", number="+12025559998")  # nobody to attribute it to
    s = snapshot(engine)
    assert [tuple(x) for x in s["suppressions"]] == [
        ("sms", "+12025559999", None, "sms_stop", None, None)
    ]
    assert s["interactions"] == []


def test_advanced_opt_out_classification_wins(client: httpx.Client, engine: Engine) -> None:
    add_customer(engine, "ann", phone=ANN, sms_opt_in=True)
    inbound(client, "SM1", "arrêt", OptOutType="STOP")  # a custom opt-out keyword
    assert snapshot(engine)["consent"] == [("ann", False)]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("STOP", "stop"),
        ("stop", "stop"),
        (" Stop ", "stop"),
        ("STOP!", "stop"),
        ("¡stop!", "stop"),
        ("end.", "stop"),
        ("OptOut", "stop"),
        ("revoke", "stop"),
        ("cancel", "stop"),
        ("stopall", "stop"),
        ("stop please", None),
        ("STOP STOP", None),
        ("stopp", None),
        ("start", "start"),
        ("Yes", "start"),
        ("unstop", "start"),
        ("help", "help"),
        ("HELP?", "help"),
        ("", None),
        ("...", None),
        ("thanks", None),
    ],
)
def test_keyword(body: str, expected: str | None) -> None:
    assert keyword(body) == expected


def test_a_receipt_racing_the_send_record_is_applied(
    client: httpx.Client, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback arrives before dispatch wrote the MessageSid: it waits a moment once."""
    import threading

    monkeypatch.setattr(twilio_route, "SETTLE_SECONDS", 0.5)
    sms(engine, 1)
    with engine.begin() as conn:
        conn.execute(update(Message).values(status="sending", provider_id=None))

    def record() -> None:
        with engine.begin() as conn:
            conn.execute(update(Message).values(status="sent", provider_id="SM" + "0" * 32))

    timer = threading.Timer(0.2, record)
    timer.start()
    assert status(client, 0, "delivered").status_code == 200
    timer.join()
    assert [st for _, st, _ in snapshot(engine)["messages"]] == ["delivered"]
