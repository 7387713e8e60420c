"""The dispatcher with real SDKs against the local fakes, on SQLite and PostgreSQL.

Time is the dispatcher's ``clock`` (the moment of sending: windows, expiry,
backoff, ``sent_at``), set by each test; leases run on the real clock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select, update

from engage.config import Config
from engage.db.models import Customer, Message, Suppression
from engage.delivery.channels import build_channels
from engage.delivery.dispatch import (
    Dispatcher,
    TokenBucket,
    backoff_delay,
    expire_leases,
)
from engage.delivery.outbox import Requeue, requeue
from engage.planning.policy import effective_window, in_window, next_opening
from engage.templating.context import CampaignInfo
from engage.templating.renderer import Renderer
from engage.testing import FakeSendGrid, FakeTwilio

from .helpers import NOW, add_customer, add_message, make_config

CAMPAIGNS = {
    "winback-30d": CampaignInfo(name="winback-30d", template="winback"),
    "points-expiring": CampaignInfo(name="points-expiring", template="points-expiring"),
}
SG_KEY = "SG.test-key"
TW_SID, TW_TOKEN = "AC" + "0" * 32, "test-token"


class Clock:
    """The dispatcher's clock, moved by the test."""

    def __init__(self, at: datetime = NOW) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def dispatcher(engine: Engine, config: Config, clock: Clock | None = None, **kw: Any) -> Dispatcher:
    return Dispatcher(
        engine,
        config,
        build_channels(config),
        Renderer(config),
        kw.pop("campaigns", lambda: CAMPAIGNS),
        rng=random.Random(7),
        clock=clock or Clock(),
        **kw,
    )


def rows(engine: Engine) -> dict[int, Any]:
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(Message))}


def statuses(engine: Engine) -> dict[int, tuple[str, str | None]]:
    return {i: (r.status, r.error) for i, r in rows(engine).items()}


def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=SG_KEY) as fake:
        yield fake


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=TW_SID, auth_token=TW_TOKEN) as fake:
        yield fake


def sg_config(tmp_path: Path, fake: FakeSendGrid, key: str = SG_KEY, **dispatch: Any) -> Config:
    return make_config(
        tmp_path,
        channels={
            "email": "sendgrid",
            "sms": "file",
            "file": {"dir": str(tmp_path / "outbox")},
            "sendgrid": {"api_host": fake.url, "timeout": 0.5, "from_email": "shop@shop.test"},
        },
        dispatch={"backoff_base": "1s", "max_attempts": 3, **dispatch},
        secrets={"SENDGRID_API_KEY": key},
    )


def test_file_channel_end_to_end(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    for n in range(3):
        add_message(engine, add_customer(engine, f"c{n}"))
    d = dispatcher(engine, config)
    stats = d.run_once(NOW)
    d.close()
    assert stats.claimed == 3 and stats.outcomes["sent"] == 3
    files = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 3
    msg = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert msg["List-Unsubscribe"].startswith("<https://engage.shop.test/u/")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    got = rows(engine).values()
    assert {r.status for r in got} == {"sent"}
    assert all(r.provider == "file" and r.provider_id and r.sent_at == NOW for r in got)
    assert all(r.claim is None and r.lease_expires_at is None and r.attempts == 1 for r in got)
    assert {r.address for r in got} == {"c0@example.com", "c1@example.com", "c2@example.com"}
    # nothing left to do: a second round claims nothing and writes nothing new
    d = dispatcher(engine, config)
    assert d.run_once(NOW).claimed == 0
    d.close()
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_sendgrid_payload_and_a_429_retried_no_sooner_than_retry_after(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    """Retry-After (30 s) outweighs the backoff (at most 1 s here): the retry is
    due 30 s after the refusal on the dispatcher's clock, and the message that
    then goes out no longer carries the first try's error."""
    config = sg_config(tmp_path, sendgrid)
    mid = add_message(engine, add_customer(engine, "ann", first_name="Ann"))
    sendgrid.script(429, retry_after=30)
    clock = Clock(NOW + timedelta(minutes=1))
    d = dispatcher(engine, config, clock)
    assert d.run_once(clock.at).outcomes == {"retry": 1}
    row = rows(engine)[mid]
    assert row.status == "retry" and row.attempts == 1 and "429" in row.error
    wait = row.next_attempt_at - clock.at
    assert timedelta(seconds=30) <= wait <= timedelta(seconds=30.001)
    assert d.run_once(clock.at + timedelta(seconds=29)).claimed == 0  # not due yet
    clock.at = row.next_attempt_at
    assert d.run_once(clock.at).outcomes == {"sent": 1}
    d.close()
    assert len(sendgrid.requests) == 2  # one refused, one accepted: sent once
    body = sendgrid.requests[-1].body
    assert body["personalizations"][0]["to"] == [{"email": "ann@example.com"}]
    assert body["from"]["email"] == "shop@shop.test"
    assert body["custom_args"] == {"engage_message_id": str(mid)}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "Ann" in body["content"][1]["value"]
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    row = rows(engine)[mid]
    assert (row.status, row.provider, row.attempts, row.error) == ("sent", "sendgrid", 2, None)
    assert row.provider_id == sendgrid.requests[-1].provider_id and row.sent_at == clock.at


def test_500_until_max_attempts_then_failed(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    config = sg_config(tmp_path, sendgrid)
    mid = add_message(engine, add_customer(engine, "bob"))
    sendgrid.script(500, times=10)
    clock = Clock()
    d = dispatcher(engine, config, clock)
    for _ in range(3):
        d.run_once(clock.at)
        clock.at = rows(engine)[mid].next_attempt_at or clock.at
    d.close()
    assert len(sendgrid.requests) == 3
    row = rows(engine)[mid]
    assert row.status == "failed" and row.attempts == 3
    assert "gave up after 3 attempts" in row.error and "500" in row.error


@pytest.mark.parametrize("provider", ["sendgrid", "twilio"])
def test_a_provider_answering_after_the_timeout_receives_each_message_once(
    engine: Engine, tmp_path: Path, provider: str
) -> None:
    """The provider accepts every message, but after the client gave up: the
    messages may have been sent, so they are `unknown`, and no later dispatch
    sends them again."""
    with (
        FakeSendGrid(api_key=SG_KEY, latency=1.0) as sg,
        FakeTwilio(account_sid=TW_SID, auth_token=TW_TOKEN, latency=1.0) as tw,
    ):
        config = make_config(
            tmp_path,
            channels={
                "email": "sendgrid",
                "sms": "twilio",
                "sendgrid": {"api_host": sg.url, "timeout": 0.3},
                "twilio": {"api_base": tw.url, "timeout": 0.3, "from_number": "+12025550100"},
            },
            secrets={
                "SENDGRID_API_KEY": SG_KEY,
                "TWILIO_ACCOUNT_SID": TW_SID,
                "TWILIO_AUTH_TOKEN": TW_TOKEN,
            },
        )
        fake = sg if provider == "sendgrid" else tw
        channel = "email" if provider == "sendgrid" else "sms"
        ids = [
            add_message(
                engine,
                add_customer(engine, f"c{n}", phone=f"+1202555010{n}", sms_opt_in=True),
                channel=channel,
            )
            for n in range(3)
        ]
        clock = Clock()
        d = dispatcher(engine, config, clock)
        assert d.run_once(NOW).outcomes == {"unknown": 3}
        for later in (timedelta(minutes=1), timedelta(hours=2)):
            clock.at = NOW + later
            assert d.run_once(clock.at).claimed == 0
        d.close()
        wait_until(lambda: len(fake.requests) >= 3)
        time.sleep(0.2)  # nothing else arrives
        assert len(fake.requests) == 3
        assert all(r.status in (201, 202) for r in fake.requests)  # each accepted, late
    got = rows(engine)
    assert {got[i].status for i in ids} == {"unknown"}
    assert all("may have accepted" in got[i].error for i in ids)


def test_a_refused_connection_is_retried_later(engine: Engine, tmp_path: Path) -> None:
    """Refused before anything was written: certainly not sent, so a retry."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(
        tmp_path,
        channels={"email": "sendgrid", "sendgrid": {"api_host": f"http://127.0.0.1:{port}"}},
        dispatch={"backoff_base": "1s"},
        secrets={"SENDGRID_API_KEY": SG_KEY},
    )
    mid = add_message(engine, add_customer(engine, "ann"))
    d = dispatcher(engine, config)
    assert d.run_once(NOW).outcomes == {"retry": 1}
    d.close()
    row = rows(engine)[mid]
    assert row.status == "retry" and "cannot reach SendGrid" in row.error


def test_twilio_21610_suppresses_the_number(
    engine: Engine, tmp_path: Path, twilio: FakeTwilio
) -> None:
    config = make_config(
        tmp_path,
        channels={
            "email": "file",
            "sms": "twilio",
            "file": {"dir": str(tmp_path / "outbox")},
            "twilio": {"api_base": twilio.url, "from_number": "+12025550100", "timeout": 2},
        },
        dispatch={"workers": 1},  # deterministic order: the scripted error hits dee
        secrets={"TWILIO_ACCOUNT_SID": TW_SID, "TWILIO_AUTH_TOKEN": TW_TOKEN},
    )
    cid = add_customer(engine, "dee", phone="+12025550123", sms_opt_in=True)
    ok = add_customer(engine, "eve", phone="+12025550124", sms_opt_in=True)
    m1 = add_message(engine, cid, channel="sms")
    m2 = add_message(engine, ok, channel="sms", send_after=NOW + timedelta(seconds=1))
    twilio.script(400, code=21610)
    d = dispatcher(engine, config)
    d.run_once(NOW + timedelta(seconds=2))
    d.close()
    st_ = statuses(engine)
    assert st_[m1][0] == "failed" and "21610" in st_[m1][1]
    assert st_[m2][0] == "sent"
    form = twilio.requests[-1].body
    assert form["To"] == "+12025550124" and form["From"] == "+12025550100"
    assert "STOP" in form["Body"]
    with engine.connect() as conn:
        sup = conn.execute(select(Suppression)).one()
    assert (sup.channel, sup.address, sup.reason, sup.customer_id) == (
        "sms",
        "+12025550123",
        "sms_stop",
        "dee",
    )


def test_opt_out_after_planning_cancels(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    m1 = add_message(engine, add_customer(engine, "fay"))
    m2 = add_message(engine, add_customer(engine, "gus"))
    with engine.begin() as conn:
        conn.execute(update(Customer).where(Customer.id == "fay").values(email_opt_in=False))
    from engage.planning import suppressions

    suppressions.add(engine, [("email", "GUS@example.com", None, "unsubscribe", "test")])
    d = dispatcher(engine, config)
    d.run_once(NOW)
    d.close()
    st_ = statuses(engine)
    assert st_[m1] == ("cancelled", "at send time: no_consent")
    assert st_[m2] == ("cancelled", "at send time: suppressed")
    assert not list((tmp_path / "outbox").glob("*"))


def test_render_error_for_one_customer_does_not_stop_the_rest(
    engine: Engine, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    (tmp_path / "templates" / "broken").mkdir()
    for name in ("subject.j2", "email.html.j2"):
        (tmp_path / "templates" / "broken" / name).write_text(
            "{% if customer.tier == 'gold' %}{{ customer.nope }}{% endif %}{{ unsubscribe_url }} "
            "{{ shop.postal_address }}"
        )
    campaigns = {**CAMPAIGNS, "broken": CampaignInfo(name="broken", template="broken")}
    bad = add_message(
        engine, add_customer(engine, "hal", tier="gold"), campaign="broken", template="broken"
    )
    good = add_message(engine, add_customer(engine, "ida"), campaign="broken", template="broken")
    d = dispatcher(engine, config, campaigns=lambda: campaigns)
    d.run_once(NOW)
    d.close()
    st_ = statuses(engine)
    assert st_[bad][0] == "render_error" and "nope" in st_[bad][1]
    assert st_[good][0] == "sent"


def test_rate_limit_is_respected(engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid) -> None:
    config = sg_config(tmp_path, sendgrid)
    config = config.model_copy(
        update={
            "channels": config.channels.model_copy(
                update={
                    "sendgrid": config.channels.sendgrid.model_copy(
                        update={"rate_per_second": 20.0}
                    )
                }
            )
        }
    )
    for n in range(30):
        add_message(engine, add_customer(engine, f"r{n:02d}"))
    d = dispatcher(engine, config)
    assert d.run_once(NOW).outcomes == {"sent": 30}
    d.close()
    times = sorted(r.at for r in sendgrid.requests)
    span = times[-1] - times[0]
    # 30 messages at 20/s with a burst of 2: 28 gaps of 50 ms at least
    assert span >= 28 / 20 * 0.9
    assert 30 / span <= 20 * 1.1 + 2


def test_a_dead_workers_claim_goes_back_and_only_started_sends_become_unknown(
    engine: Engine, tmp_path: Path
) -> None:
    """A worker reserved two messages and started one, then died: when the lease
    runs out the started one is `unknown` (never resent automatically) and the
    other goes back to the queue; an operator's requeue is the only way back."""
    from engage.db import states

    config = make_config(tmp_path)
    started, reserved = (add_message(engine, add_customer(engine, n)) for n in ("jo", "kay"))
    with engine.begin() as conn:
        states.claim(conn, token="dead", owner="w", limit=9, lease=timedelta(minutes=5), due_by=NOW)
        states.start(conn, [started], claim="dead", lease=timedelta(minutes=5))
    d = dispatcher(engine, config)
    assert d.run_once(NOW + timedelta(minutes=10)).claimed == 0  # held: nothing is due
    assert expire_leases(engine, datetime.now(UTC) + timedelta(minutes=4)) == (0, 0)
    assert expire_leases(engine, datetime.now(UTC) + timedelta(minutes=6)) == (1, 1)
    assert statuses(engine)[started][0] == "unknown"
    assert d.run_once(NOW + timedelta(minutes=10)).outcomes == {"sent": 1}  # the reserved one
    assert requeue(engine, Requeue(ids=[started, 999]), NOW) == [started]
    assert d.run_once(NOW + timedelta(minutes=11)).outcomes == {"sent": 1}
    assert requeue(engine, Requeue(ids=[started]), NOW) == []  # sent: nothing to requeue
    d.close()
    assert {r.status for r in rows(engine).values()} == {"sent"}


def test_a_late_outcome_of_an_expired_claim_never_touches_the_row_claimed_again(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    """Worker A's call hangs past its lease; the message turns `unknown`, an
    operator re-queues it and worker B sends it. A's late "sent" must not
    overwrite B's record (both are the same process here: same host and pid)."""
    config = sg_config(tmp_path, sendgrid, lease="5m")
    config = config.model_copy(
        update={
            "channels": config.channels.model_copy(
                update={"sendgrid": config.channels.sendgrid.model_copy(update={"timeout": 10})}
            )
        }
    )
    mid = add_message(engine, add_customer(engine, "lee"))
    sendgrid.script(202, delay=1.5)  # A's request: accepted, slowly
    a, b = dispatcher(engine, config), dispatcher(engine, config)
    first = threading.Thread(target=a.run_once, args=(NOW,))
    first.start()
    wait_until(lambda: rows(engine)[mid].status == "sending")
    assert expire_leases(engine, datetime.now(UTC) + timedelta(minutes=6)) == (0, 1)
    assert requeue(engine, Requeue(ids=[mid]), NOW) == [mid]
    assert b.run_once(NOW).outcomes == {"sent": 1}
    first.join(10)
    a.close()
    b.close()
    wait_until(lambda: len(sendgrid.requests) == 2)
    row = rows(engine)[mid]
    assert row.status == "sent" and row.attempts == 1  # B's attempt, after the requeue
    assert row.provider_id == _second_answer(sendgrid)


def _second_answer(fake: FakeSendGrid) -> str | None:
    """The provider id handed out for the second request to arrive (B's)."""
    second = sorted(fake.requests, key=lambda r: r.at)[1]
    return second.provider_id


def test_stop_releases_claimed_messages_unsent(engine: Engine, tmp_path: Path) -> None:
    """Stop arrives mid-batch: what is claimed but not yet handed to a provider
    goes back to ``planned`` untouched; nothing more is claimed."""
    config = make_config(tmp_path, dispatch={"workers": 1, "batch_size": 2})
    ids = [add_message(engine, add_customer(engine, f"kim{n}")) for n in range(4)]
    stop = threading.Event()
    channels = build_channels(config)
    send = channels["email"].send

    def send_then_stop(message):  # type: ignore[no-untyped-def]
        stop.set()
        return send(message)

    channels["email"].send = send_then_stop  # type: ignore[method-assign]
    d = Dispatcher(
        engine, config, channels, Renderer(config), lambda: CAMPAIGNS, stop=stop, clock=Clock()
    )
    stats = d.run_once(NOW)
    d.close()
    assert stats.outcomes == {"sent": 1, "released": 1}
    got = rows(engine)
    assert got[ids[0]].status == "sent"
    assert (got[ids[1]].status, got[ids[1]].attempts, got[ids[1]].claim) == ("planned", 0, None)
    assert {got[i].status for i in ids[2:]} == {"planned"}  # never claimed
    assert {got[i].attempts for i in ids[2:]} == {0}


def test_refused_credentials_stop_the_channel_and_leave_its_messages_untouched(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    config = sg_config(tmp_path, sendgrid, key="SG.wrong", workers=2, batch_size=5)
    emails = [add_message(engine, add_customer(engine, f"e{n:02d}")) for n in range(12)]
    texts = [
        add_message(
            engine,
            add_customer(engine, f"s{n}", phone=f"+1202555012{n}", sms_opt_in=True),
            channel="sms",
        )
        for n in range(3)
    ]
    d = dispatcher(engine, config)
    stats = d.run_once(NOW)
    d.close()
    assert set(stats.refused) == {"email"} and "SENDGRID_API_KEY" in stats.refused["email"]
    assert "SG.wrong" not in stats.refused["email"]
    assert stats.outcomes["sent"] == 3  # SMS went on
    assert len(sendgrid.requests) <= 2  # at most what was in flight
    got = rows(engine)
    for i in emails:
        assert (got[i].status, got[i].attempts, got[i].error, got[i].claim) == (
            "planned",
            0,
            None,
            None,
        )
    assert {got[i].status for i in texts} == {"sent"}


def test_failed_messages_are_logged_with_their_reason(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    config = sg_config(tmp_path, sendgrid)
    mid = add_message(engine, add_customer(engine, "mo"))
    sendgrid.script(400, message="The content value must be a string", field="content")
    d = dispatcher(engine, config)
    with caplog.at_level(logging.INFO, logger="engage.delivery.dispatch"):
        d.run_once(NOW)
    d.close()
    [line] = [r for r in caplog.records if r.__dict__.get("event") == "message_failed"]
    assert line.__dict__["message_id"] == mid and line.__dict__["campaign"] == "winback-30d"
    assert "HTTP 400" in line.__dict__["reason"] and "content value" in line.__dict__["reason"]


def test_outcomes_of_a_batch_larger_than_a_chunk_are_all_recorded(
    engine: Engine, tmp_path: Path
) -> None:
    """Outcomes are written in chunks: every one of a batch spanning several
    chunks lands, each with its own status and values."""
    from engage.delivery.dispatch import RECORD_EVERY

    config = make_config(tmp_path, dispatch={"batch_size": RECORD_EVERY * 2 + 7})
    sent = [add_message(engine, add_customer(engine, f"s{n:03}")) for n in range(RECORD_EVERY + 30)]
    gone = [add_message(engine, add_customer(engine, f"g{n:03}")) for n in range(RECORD_EVERY)]
    with engine.begin() as conn:
        ids = [f"g{n:03}" for n in range(RECORD_EVERY)]
        conn.execute(update(Customer).where(Customer.id.in_(ids)).values(email_opt_in=False))
    d = dispatcher(engine, config)
    stats = d.run_once(NOW)
    d.close()
    assert stats.claimed == len(sent) + len(gone)
    assert stats.outcomes == {"sent": len(sent), "cancelled": len(gone)}
    got = rows(engine)
    for i in sent:
        r = got[i]
        assert (r.status, r.provider, r.claim) == ("sent", "file", None)
        assert r.provider_id and r.sent_at and r.address == f"{r.customer_id}@example.com"
    for i in gone:
        assert (got[i].status, got[i].error) == ("cancelled", "at send time: no_consent")
        assert got[i].lease_expires_at is None and got[i].provider_id is None


def test_a_campaign_that_cannot_be_read_fails_its_messages_not_the_batch(
    engine: Engine, tmp_path: Path
) -> None:
    class Broken:
        name = "broken"

        @property
        def utm(self) -> None:
            raise RuntimeError("bad settings")

    config = make_config(tmp_path)
    good = add_message(engine, add_customer(engine, "ana"))
    bad = add_message(engine, add_customer(engine, "bo"), campaign="broken")
    d = dispatcher(engine, config, campaigns=lambda: {**CAMPAIGNS, "broken": Broken()})
    d.run_once(NOW)
    d.close()
    st_ = statuses(engine)
    assert st_[good][0] == "sent"
    assert st_[bad][0] == "failed" and "internal error" in st_[bad][1]


# -- send windows and expiry at the moment of sending --------------------------------------


def test_a_late_message_waits_for_its_window_and_a_stale_one_expires(
    engine: Engine, tmp_path: Path
) -> None:
    """Planned in the window, dispatched after it closed (downtime, a backlog):
    it waits for the next opening; one older than expires_after is dropped."""
    config = make_config(tmp_path)  # email window 08:00-21:00 local
    tokyo = add_customer(engine, "tk", timezone="Asia/Tokyo")
    planned = datetime(2026, 6, 15, 2, 0, tzinfo=UTC)  # 11:00 in Tokyo
    late = add_message(engine, tokyo, send_after=planned, expires_at=planned + timedelta(hours=24))
    stale = add_message(
        engine,
        add_customer(engine, "ny", timezone="America/New_York"),
        send_after=planned,
        expires_at=planned + timedelta(hours=2),
        key="stale",
    )
    clock = Clock(datetime(2026, 6, 15, 13, 30, tzinfo=UTC))  # 22:30 Tokyo, 09:30 New York
    d = dispatcher(engine, config, clock)
    assert d.run_once(clock.at).outcomes == {"deferred": 1, "expired": 1}
    got = rows(engine)
    opening = datetime(2026, 6, 15, 23, 0, tzinfo=UTC)  # 08:00 the next day in Tokyo
    assert (got[late].status, got[late].send_after, got[late].attempts) == ("planned", opening, 0)
    assert got[stale].status == "expired" and "expires_after" in got[stale].error
    assert d.run_once(clock.at).claimed == 0  # not due before its window
    clock.at = opening
    assert d.run_once(clock.at).outcomes == {"sent": 1}
    d.close()


def test_a_message_whose_window_opens_after_it_expires_is_expired_now(
    engine: Engine, tmp_path: Path
) -> None:
    config = make_config(tmp_path)
    mid = add_message(
        engine,
        add_customer(engine, "tk", timezone="Asia/Tokyo"),
        send_after=datetime(2026, 6, 15, 11, 0, tzinfo=UTC),  # 20:00 in Tokyo
        expires_at=datetime(2026, 6, 15, 15, 0, tzinfo=UTC),  # midnight in Tokyo
    )
    clock = Clock(datetime(2026, 6, 15, 13, 30, tzinfo=UTC))  # 22:30 in Tokyo: closed
    d = dispatcher(engine, config, clock)
    assert d.run_once(clock.at).outcomes == {"expired": 1}
    d.close()
    assert statuses(engine)[mid][0] == "expired"


class RunningClock:
    """The dispatcher's clock: ``at`` when first read, then running at ``speed``
    simulated seconds per real second."""

    def __init__(self, at: datetime, speed: float) -> None:
        self.at, self.speed, self.t0 = at, speed, None

    def __call__(self) -> datetime:
        self.t0 = self.t0 or time.monotonic()
        return self.at + timedelta(seconds=(time.monotonic() - self.t0) * self.speed)


def test_a_rate_limit_holding_messages_past_the_window_defers_them(
    engine: Engine, tmp_path: Path, twilio: FakeTwilio
) -> None:
    """Prepared inside the window, then held back by the rate limit until it
    closed: checked again at the start of each request, they wait for the next
    opening instead of going out at night."""
    config = make_config(
        tmp_path,
        channels={
            "email": "file",
            "sms": "twilio",
            "file": {"dir": str(tmp_path / "outbox")},
            "twilio": {"api_base": twilio.url, "from_number": "+12025550100", "rate_per_second": 10},
        },
        secrets={"TWILIO_ACCOUNT_SID": TW_SID, "TWILIO_AUTH_TOKEN": TW_TOKEN},
    )
    start = datetime(2026, 6, 15, 19, 59, tzinfo=UTC)  # the SMS window ends at 20:00
    for n in range(20):
        cid = add_customer(engine, f"c{n}", phone=f"+1202555{n:04d}", sms_opt_in=True)
        add_message(engine, cid, channel="sms", send_after=start, key=f"k{n}")
    clock = RunningClock(start, speed=60)  # a simulated minute per real second
    d = dispatcher(engine, config, clock)
    try:
        d.run_once(start)  # 10 requests/s, a minute per second: half start after 20:00
    finally:
        d.close()
    got = rows(engine).values()
    sent = [r for r in got if r.status == "sent"]
    waiting = [r for r in got if r.status == "planned"]
    assert sent and waiting and len(sent) + len(waiting) == 20
    close = datetime(2026, 6, 15, 20, 0, tzinfo=UTC)
    # started before 20:00 (sent_at is read when the answer is back: a loaded machine may lag)
    assert all(r.sent_at < close + timedelta(seconds=30) for r in sent)
    assert {r.send_after for r in waiting} == {datetime(2026, 6, 16, 9, 0, tzinfo=UTC)}
    assert len(twilio.requests) == len(sent)


ZONES = [
    "UTC",
    "Asia/Kolkata",
    "Australia/Sydney",
    "America/New_York",
    "America/Los_Angeles",
    "Pacific/Chatham",
    "Asia/Kathmandu",
    "Europe/London",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "America/St_Johns",
    "Australia/Lord_Howe",
]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=4),
    occurrence=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.just(UTC)
    ),
    delays=st.lists(st.integers(0, 36 * 3600), min_size=1, max_size=4),
    channel=st.sampled_from(["email", "sms"]),
)
def test_no_message_is_ever_sent_outside_its_window(
    sqlite_engine: Engine,
    tmp_path: Path,
    zones: list[str],
    occurrence: datetime,
    delays: list[int],
    channel: str,
) -> None:
    """Planned at an occurrence, dispatched after random delays (downtime,
    backlogs): every message that goes out goes out inside the recipient's
    local window, SMS never outside 08:00-21:00."""
    engine = sqlite_engine
    config = make_config(tmp_path, send_windows={"sms": {"start": "09:00", "end": "20:00"}})
    window = effective_window(channel, None, config)
    with engine.begin() as conn:
        conn.execute(delete(Message))
        conn.execute(delete(Customer))
    for n, zone in enumerate(zones):
        cid = add_customer(
            engine, f"c{n}", timezone=zone, phone=f"+1202555{n:04d}", sms_opt_in=True
        )
        add_message(
            engine,
            cid,
            channel=channel,
            send_after=next_opening(occurrence, zone, window),  # as the planner plans it
            expires_at=occurrence + timedelta(hours=24),
            key=f"k{n}",
        )
    clock = Clock(occurrence)
    d = dispatcher(engine, config, clock)
    try:
        for delay in sorted(delays):
            clock.at = occurrence + timedelta(seconds=delay)
            d.run_once(clock.at)
    finally:
        d.close()
    for r in rows(engine).values():
        if r.status == "sent":
            local = r.sent_at.astimezone(ZoneInfo(str(_zone_of(engine, r.customer_id))))
            assert in_window(local.time(), window), (r.customer_id, local)
            if channel == "sms":
                assert 8 <= local.hour < 21
        else:
            assert r.status in ("planned", "expired"), r.status


def _zone_of(engine: Engine, cid: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(Customer.timezone).where(Customer.id == cid)).scalar_one()


# -- pure parts ------------------------------------------------------------------------------


@given(
    attempt=st.integers(1, 20),
    retry_after=st.one_of(st.none(), st.floats(0, 3600)),
    seed=st.integers(0, 2**32),
)
def test_backoff_bounds(attempt: int, retry_after: float | None, seed: int) -> None:
    base, cap = timedelta(seconds=30), timedelta(hours=1)
    d = backoff_delay(attempt, base, cap, retry_after, random.Random(seed)).total_seconds()
    exp = min(cap.total_seconds(), 30 * 2 ** (attempt - 1))
    us = 1e-6  # timedelta keeps microseconds
    assert d >= exp / 2 - us
    assert d <= max(exp, retry_after or 0) + us
    if retry_after is not None:
        assert d >= retry_after - us


def test_token_bucket_paces_what_it_grants() -> None:
    clock = [0.0]
    bucket = TokenBucket(rate=40, clock=lambda: clock[0])
    assert bucket.take(100) == 4  # a burst of a tenth of a second's worth
    assert bucket.take(1) == 0 and bucket.wait() == pytest.approx(1 / 40)
    granted = 0
    for _ in range(48):  # 3 s in steps of 1/16 s
        clock[0] += 0.0625
        granted += bucket.take(100)
    assert granted == 120  # 40 per second
