"""``GET|POST /u/{token}`` over HTTP against the real app under uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from engage.campaigns.schema import Campaign
from engage.config import Config
from engage.db.models import Customer, Message
from engage.planning import suppressions
from engage.planning.planner import plan_occurrence
from engage.unsubscribe import make_token
from engage.web import create_app

from .helpers import NOW, SECRET, add_customer, add_message, make_config
from .webtools import feedback_state, serving


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Config:
    return make_config(tmp_path, database_url=db_url)


@pytest.fixture
def client(config: Config, engine: Engine) -> Iterator[httpx.Client]:
    with serving(create_app(config)) as url, httpx.Client(base_url=url) as c:
        yield c


def campaign() -> Campaign:
    return Campaign.model_validate(
        {
            "name": "winback-30d",
            "schedule": {"cron": "0 10 * * *", "timezone": "UTC"},
            "audience": {"quiet_for": "30d"},
            "channels": ["email"],
            "template": "winback",
            "send_window": {"start": "00:00", "end": "24:00"},
        }
    )


def token(customer: str = "ann", channel: str = "email", name: str = "winback-30d") -> str:
    return make_token(SECRET, customer, channel, name)


def state(engine: Engine) -> tuple[list[Any], list[Any]]:
    """Everything an unsubscribe may change: suppressions and consent flags."""
    with engine.connect() as conn:
        got = feedback_state(conn, Customer.email_opt_in, Customer.sms_opt_in)
    return [tuple(r) for r in got["suppressions"]], [tuple(r) for r in got["consent"]]


ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


def test_one_click_post_suppresses_and_a_later_plan_skips_the_customer(
    client: httpx.Client, engine: Engine, config: Config
) -> None:
    add_customer(engine, "ann")
    add_customer(engine, "bob")
    sent = add_message(engine, "ann", status="sent", sent_at=NOW - timedelta(days=40), key="old")

    r = client.post(f"/u/{token()}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status_code == 200, r.text
    assert r.json() == {"channel": "email", "status": "unsubscribed", "changed": True}
    supp, consent = state(engine)
    assert supp == [("email", "ann@example.com", "ann", "unsubscribe", "winback-30d", sent)]
    assert ("ann", False, False) in consent and ("bob", True, False) in consent

    # idempotent: the same POST again changes nothing
    again = client.post(f"/u/{token()}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert state(engine) == (supp, consent)

    result = plan_occurrence(engine, config, campaign(), NOW, now=NOW)
    with engine.connect() as conn:
        planned = (
            conn.execute(select(Message.customer_id).where(Message.status == "planned"))
            .scalars()
            .all()
        )
    assert planned == ["bob"]
    assert result.counts["send"] == 1
    assert result.counts.get("suppressed", 0) + result.counts.get("no_consent", 0) == 1


def test_rfc8058_multipart_body_unsubscribes(client: httpx.Client, engine: Engine) -> None:
    """RFC 8058's own example sends the one-click key as multipart/form-data."""
    add_customer(engine, "ann")
    r = client.post(f"/u/{token()}", files={"List-Unsubscribe": (None, "One-Click")})
    assert r.status_code == 200 and r.json()["status"] == "unsubscribed"
    assert state(engine)[0][0][3] == "unsubscribe"


def test_get_alone_changes_nothing(client: httpx.Client, engine: Engine) -> None:
    add_customer(engine, "ann")
    before = state(engine)
    for _ in range(3):  # a mail scanner, a link preview, the person
        r = client.get(f"/u/{token()}")
        assert r.status_code == 200 and r.json()["status"] == "subscribed"
        page = client.get(f"/u/{token()}", headers={"Accept": "text/html"})
        assert page.status_code == 200
    assert state(engine) == before
    html = page.text
    assert "Test Shop" in html and "a***@example.com" in html and "ann@example.com" not in html
    assert f'action="{token()}"' in html and 'name="List-Unsubscribe" value="One-Click"' in html
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "script" not in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # last character changed
        lambda t: t[:10] + ("x" if t[10] != "x" else "y") + t[11:],  # one in the middle
        lambda t: t[:-4],  # truncated by a mail program
        lambda t: make_token("another-secret-0123456789", "ann", "email", "winback-30d"),
    ],
    ids=["last", "middle", "truncated", "forged"],
)
def test_altered_token_gets_400_and_changes_nothing(
    client: httpx.Client, engine: Engine, mangle: Any
) -> None:
    add_customer(engine, "ann")
    before = state(engine)
    bad = mangle(token())
    assert bad != token()
    r = client.post(f"/u/{bad}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_token"
    assert client.get(f"/u/{bad}").status_code == 400
    page = client.get(f"/u/{bad}", headers={"Accept": "text/html"})
    assert page.status_code == 400 and "not valid" in page.text
    assert state(engine) == before


def test_resubscribe_through_the_same_token(client: httpx.Client, engine: Engine) -> None:
    add_customer(engine, "ann")
    before = state(engine)
    browser = {"Accept": "text/html"}
    page = client.post(f"/u/{token()}", data={"List-Unsubscribe": "One-Click"}, headers=browser)
    assert page.status_code == 200 and "is unsubscribed" in page.text
    assert 'name="action" value="resubscribe"' in page.text  # offered right away
    assert state(engine)[1] != before[1]

    back = client.post(f"/u/{token()}", data={"action": "resubscribe"}, headers=browser)
    assert back.status_code == 200 and "Welcome back" in back.text
    assert state(engine) == before  # suppression lifted, consent restored
    assert client.get(f"/u/{token()}").json()["status"] == "subscribed"

    # another customer's token cannot re-subscribe ann
    add_customer(engine, "bob")
    client.post(f"/u/{token()}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    after = state(engine)
    r = client.post(f"/u/{token('bob')}", data={"action": "resubscribe"})
    assert r.status_code == 200
    assert state(engine)[0] == after[0]


def test_resubscribe_never_lifts_a_bounce_or_spam_report(
    client: httpx.Client, engine: Engine
) -> None:
    add_customer(engine, "ann")
    suppressions.add(engine, [("email", "ann@example.com", "ann", "spam_report", "sendgrid")])
    before = state(engine)
    assert client.get(f"/u/{token()}").json()["status"] == "blocked"
    r = client.post(f"/u/{token()}", data={"action": "resubscribe"})
    assert r.status_code == 200 and r.json()["status"] == "blocked"
    assert state(engine) == before


def test_sms_token_clears_sms_consent(client: httpx.Client, engine: Engine) -> None:
    add_customer(engine, "ann", phone="+12025550123", sms_opt_in=True)
    r = client.post(f"/u/{token(channel='sms')}", content=b"", headers=ONE_CLICK)
    assert r.status_code == 200
    supp, consent = state(engine)
    assert supp == [("sms", "+12025550123", "ann", "unsubscribe", "winback-30d", None)]
    assert ("ann", True, False) in consent


def test_unknown_customer_is_404(client: httpx.Client, engine: Engine) -> None:
    r = client.post(
        f"/u/{token('ghost')}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK
    )
    assert r.status_code == 404 and r.json()["error"] == "unknown_recipient"
    assert state(engine) == ([], [])


def test_disabled_without_secret_key(tmp_path: Path, db_url: str, engine: Engine) -> None:
    config = make_config(tmp_path, database_url=db_url)
    config = config.model_copy(update={"secrets": {}})
    add_customer(engine, "ann")
    with serving(create_app(config)) as url, httpx.Client(base_url=url) as c:
        r = c.post(f"/u/{token()}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status_code == 404 and r.json()["error"] == "endpoint_disabled"
    assert state(engine)[0] == []
