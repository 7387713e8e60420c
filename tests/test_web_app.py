"""The app as a whole: health, metrics, errors, disabled endpoints, bad secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from engage.errors import ConfigError
from engage.web import create_app
from engage.web.context import build_context, describe, web_engine

from .helpers import add_customer, add_message, make_config
from .webtools import API_TOKEN, SendGridSigner, serving


def test_healthz_and_metrics(tmp_path: Path, db_url: str, engine: Engine) -> None:
    add_customer(engine, "ann")
    add_message(engine, "ann", status="sent", key="1")
    add_message(engine, "ann", status="planned", key="2")
    add_message(engine, "ann", status="planned", key="3", channel="sms")
    config = make_config(tmp_path, database_url=db_url)
    with serving(create_app(config)) as url, httpx.Client(base_url=url) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}
        metrics = c.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    for line in (
        'engage_messages{channel="email",status="sent"} 1.0',
        'engage_messages{channel="email",status="planned"} 1.0',
        'engage_messages{channel="sms",status="planned"} 1.0',
        'engage_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"} 1.0',
    ):
        assert line in text, line
    assert "_created" not in text


def test_healthz_is_503_when_the_database_is_gone(tmp_path: Path) -> None:
    config = make_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with serving(create_app(config)) as url:
        r = httpx.get(f"{url}/healthz")
        assert r.status_code == 503 and r.json()["database"] == "unreachable"
        m = httpx.get(f"{url}/metrics")  # the outbox gauge needs the database too
        assert m.status_code == 503 and m.json()["error"] == "database_unavailable"


def test_unknown_paths_and_methods_are_json_and_logged_once(
    tmp_path: Path, db_url: str, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engage.web")
    config = make_config(tmp_path, database_url=db_url)
    with serving(create_app(config)) as url, httpx.Client(base_url=url) as c:
        r1 = c.get("/u/some-token/../../etc/passwd")
        r2 = c.delete("/healthz")
        r3 = c.post("/webhooks/sendgrid", json=[])
        r4 = c.post("/webhooks/twilio/inbound", data={"Body": "STOP"})
    assert (r1.status_code, r1.json()["error"]) == (404, "not_found")
    assert (r2.status_code, r2.json()["error"]) == (405, "method_not_allowed")
    assert (r3.status_code, r3.json()["error"]) == (404, "endpoint_disabled")
    assert (r4.status_code, r4.json()["error"]) == (404, "endpoint_disabled")
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in r3.json()["message"]
    lines = [r for r in caplog.records if getattr(r, "event", None) == "http_rejected"]
    assert [(r.status, r.code) for r in lines] == [  # type: ignore[attr-defined]
        (404, "not_found"),
        (405, "method_not_allowed"),
        (404, "endpoint_disabled"),
        (404, "endpoint_disabled"),
    ]


def test_startup_says_what_is_enabled(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, secrets={"ENGAGE_API_TOKEN": API_TOKEN, "TWILIO_AUTH_TOKEN": "tok"}
    )
    engine = web_engine(config.db_url)
    lines = describe(build_context(config, engine))
    engine.dispose()
    assert lines == [
        "enabled: GET|POST /u/{token}",
        "disabled: POST /webhooks/sendgrid (SENDGRID_WEBHOOK_PUBLIC_KEY is not set)",
        "enabled: POST /webhooks/twilio/status, POST /webhooks/twilio/inbound",
        "enabled: POST /v1/customers, POST /v1/interactions, POST /v1/events, POST /v1/points",
        "enabled: GET /healthz, GET /metrics",
    ]
    example = config.model_copy(update={"public_url": "https://engage.example.com"})
    engine = web_engine(config.db_url)
    assert describe(build_context(example, engine))[-1].startswith(
        "warning: public_url is still https://engage.example.com"
    )
    engine.dispose()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SENDGRID_WEBHOOK_PUBLIC_KEY", "not a key", "not an ECDSA P-256 public key"),
        ("ENGAGE_API_TOKEN", "short", "at least 16 characters"),
        ("ENGAGE_SECRET_KEY", "short", "at least 16 characters"),
    ],
)
def test_unusable_secrets_stop_the_app_with_a_clear_error(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    config = make_config(tmp_path, secrets={name: value})
    with pytest.raises(ConfigError, match=message):
        create_app(config)


def test_sendgrid_key_may_be_pasted_as_pem(tmp_path: Path) -> None:
    key = SendGridSigner().public_key
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        + "\n".join(key[i : i + 64] for i in range(0, len(key), 64))
        + "\n-----END PUBLIC KEY-----\n"
    )
    config = make_config(tmp_path, secrets={"SENDGRID_WEBHOOK_PUBLIC_KEY": pem})
    engine = web_engine(config.db_url)
    assert build_context(config, engine).enabled["sendgrid"]
    engine.dispose()


def test_a_bug_is_a_json_500(
    tmp_path: Path, db_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engage.unsubscribe import make_token
    from engage.web import feedback

    from .helpers import SECRET

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(feedback, "look_up", broken)
    config = make_config(tmp_path, database_url=db_url)
    with serving(create_app(config)) as url:
        r = httpx.get(f"{url}/u/{make_token(SECRET, 'ann', 'email', 'x')}")
    assert r.status_code == 500 and r.json()["error"] == "internal_error"


def test_old_webhook_event_ids_are_pruned(engine: Engine) -> None:
    from datetime import timedelta

    from sqlalchemy import insert, select

    from engage.db.models import WebhookEvent
    from engage.web.feedback import prune

    from .helpers import NOW

    with engine.begin() as conn:
        conn.execute(
            insert(WebhookEvent),
            [
                {"provider": "sendgrid", "event_id": "old", "kind": "open",
                 "received_at": NOW - timedelta(days=8)},
                {"provider": "sendgrid", "event_id": "new", "kind": "open",
                 "received_at": NOW - timedelta(days=6)},
            ],
        )
    assert prune(engine, NOW - timedelta(days=7)) == 1
    with engine.connect() as conn:
        assert conn.execute(select(WebhookEvent.event_id)).scalars().all() == ["new"]
