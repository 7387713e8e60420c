"""The dispatcher with real SDKs against the local fakes, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update

from engage.config import Config
from engage.db.models import Customer, Message, Suppression
from engage.delivery.channels import build_channels
from engage.delivery.channels.base import Outgoing
from engage.delivery.dispatch import (
    Dispatcher,
    TokenBucket,
    backoff_delay,
    claim,
    expire_leases,
    requeue,
)
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


def dispatcher(engine: Engine, config: Config, **kw) -> Dispatcher:
    return Dispatcher(
        engine,
        config,
        build_channels(config),
        Renderer(config),
        lambda: CAMPAIGNS,
        rng=random.Random(7),
        **kw,
    )


def statuses(engine: Engine) -> dict[int, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {r.id: (r.status, r.error) for r in conn.execute(select(Message))}


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=SG_KEY) as fake:
        yield fake


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(account_sid=TW_SID, auth_token=TW_TOKEN) as fake:
        yield fake


def sg_config(tmp_path: Path, fake: FakeSendGrid, **dispatch) -> Config:
    return make_config(
        tmp_path,
        channels={
            "email": "sendgrid",
            "sms": "file",
            "file": {"dir": str(tmp_path / "outbox")},
            "sendgrid": {"api_host": fake.url, "timeout": 0.5, "from_email": "shop@shop.test"},
        },
        dispatch={"backoff_base": "1s", "max_attempts": 3, **dispatch},
        secrets={"SENDGRID_API_KEY": SG_KEY},
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
    with engine.connect() as conn:
        rows = conn.execute(select(Message)).all()
    assert {r.status for r in rows} == {"sent"}
    assert all(r.provider == "file" and r.provider_id and r.sent_at for r in rows)
    assert {r.address for r in rows} == {"c0@example.com", "c1@example.com", "c2@example.com"}
    # nothing left to do: a second round claims nothing and writes nothing new
    d = dispatcher(engine, config)
    assert d.run_once(NOW).claimed == 0
    d.close()
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3


def test_sendgrid_payload_and_429_then_success(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    config = sg_config(tmp_path, sendgrid)
    mid = add_message(engine, add_customer(engine, "ann", first_name="Ann"))
    sendgrid.script(429, retry_after=30)
    d = dispatcher(engine, config)
    assert d.run_once(NOW).outcomes == {"retry": 1}
    with engine.connect() as conn:
        row = conn.execute(select(Message).where(Message.id == mid)).one()
    assert row.status == "retry" and row.attempts == 1
    assert row.next_attempt_at - NOW >= timedelta(seconds=30)  # Retry-After honoured
    assert d.run_once(NOW + timedelta(seconds=10)).claimed == 0  # not due yet
    assert d.run_once(row.next_attempt_at).outcomes == {"sent": 1}
    d.close()
    assert len(sendgrid.requests) == 2  # one refused, one accepted: sent once
    body = sendgrid.requests[-1].body
    assert body["personalizations"][0]["to"] == [{"email": "ann@example.com"}]
    assert body["from"]["email"] == "shop@shop.test"
    assert body["custom_args"] == {"engage_message_id": str(mid)}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "Ann" in body["content"][1]["value"]
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    with engine.connect() as conn:
        row = conn.execute(select(Message).where(Message.id == mid)).one()
    assert row.status == "sent" and row.provider == "sendgrid"
    assert row.provider_id == sendgrid.requests[-1].provider_id


def test_500_until_max_attempts_then_failed(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    config = sg_config(tmp_path, sendgrid)
    mid = add_message(engine, add_customer(engine, "bob"))
    sendgrid.script(500, times=10)
    d = dispatcher(engine, config)
    when = NOW
    for _ in range(3):
        d.run_once(when)
        with engine.connect() as conn:
            row = conn.execute(select(Message).where(Message.id == mid)).one()
        when = row.next_attempt_at or when
    d.close()
    assert len(sendgrid.requests) == 3
    assert row.status == "failed" and row.attempts == 3
    assert "gave up after 3 attempts" in row.error and "500" in row.error


def test_hanging_provider_times_out_and_retries(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid
) -> None:
    config = sg_config(tmp_path, sendgrid)
    mid = add_message(engine, add_customer(engine, "cat"))
    sendgrid.script("hang", seconds=3)
    d = dispatcher(engine, config)
    assert d.run_once(NOW).outcomes == {"retry": 1}
    with engine.connect() as conn:
        row = conn.execute(select(Message).where(Message.id == mid)).one()
    assert "Transient" in row.error
    assert d.run_once(row.next_attempt_at).outcomes == {"sent": 1}
    d.close()


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
    CAMPAIGNS["broken"] = CampaignInfo(name="broken", template="broken")
    try:
        bad = add_message(
            engine, add_customer(engine, "hal", tier="gold"), campaign="broken", template="broken"
        )
        good = add_message(
            engine, add_customer(engine, "ida"), campaign="broken", template="broken"
        )
        d = dispatcher(engine, config)
        d.run_once(NOW)
        d.close()
    finally:
        del CAMPAIGNS["broken"]
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
    # 30 messages at 20/s with a burst of 1: 29 gaps of 50 ms at least
    assert span >= 29 / 20 * 0.9
    assert 30 / span <= 20 * 1.1 + 1


def test_lease_expiry_makes_unknown_and_requeue_is_explicit(engine: Engine, tmp_path: Path) -> None:
    config = make_config(tmp_path)
    mid = add_message(engine, add_customer(engine, "jo"))
    claimed = claim(engine, "dead-worker", NOW, 10, timedelta(minutes=5))
    assert [c.id for c in claimed] == [mid]
    # the worker died: nothing is due, nothing resends it
    d = dispatcher(engine, config)
    assert d.run_once(NOW + timedelta(minutes=10)).claimed == 0
    assert expire_leases(engine, NOW + timedelta(minutes=4)) == 0
    assert expire_leases(engine, NOW + timedelta(minutes=6)) == 1
    assert statuses(engine)[mid][0] == "unknown"
    assert d.run_once(NOW + timedelta(minutes=10)).claimed == 0
    assert requeue(engine, [mid, 999], NOW + timedelta(minutes=11)) == {
        mid: "requeued",
        999: "not found",
    }
    assert d.run_once(NOW + timedelta(minutes=11)).outcomes == {"sent": 1}
    assert requeue(engine, [mid], NOW) == {mid: "not requeueable (sent)"}
    d.close()


def test_stop_releases_claimed_messages_unsent(engine: Engine, tmp_path: Path) -> None:
    """Stop arrives mid-batch: what is claimed but not yet handed to a provider
    goes back to ``planned`` with its attempt undone; nothing more is claimed."""
    config = make_config(tmp_path, dispatch={"workers": 1, "batch_size": 2})
    ids = [add_message(engine, add_customer(engine, f"kim{n}")) for n in range(4)]
    stop = threading.Event()
    channels = build_channels(config)
    send = channels["email"].send

    def send_then_stop(message):  # type: ignore[no-untyped-def]
        stop.set()
        return send(message)

    channels["email"].send = send_then_stop  # type: ignore[method-assign]
    d = Dispatcher(engine, config, channels, Renderer(config), lambda: CAMPAIGNS, stop=stop)
    stats = d.run_once(NOW)
    d.close()
    assert stats.outcomes == {"sent": 1, "released": 1}
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Message))}
    assert rows[ids[0]].status == "sent"
    assert (rows[ids[1]].status, rows[ids[1]].attempts, rows[ids[1]].lease_owner) == (
        "planned",
        0,
        None,
    )
    assert {rows[i].status for i in ids[2:]} == {"planned"}  # never claimed
    assert {rows[i].attempts for i in ids[2:]} == {0}


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


def test_token_bucket_paces_acquisitions() -> None:
    clock = [0.0]
    bucket = TokenBucket(rate=4, clock=lambda: clock[0])
    assert bucket.acquire()  # the initial burst of one
    never_wait = threading.Event()
    never_wait.set()  # acquire() gives up instead of waiting: count what is available
    granted = 0
    for _ in range(48):  # 3 s in steps of 1/16 s
        clock[0] += 0.0625
        granted += bucket.acquire(never_wait)
    assert granted == 12  # 4 per second


def test_outcomes_of_a_batch_larger_than_a_chunk_are_all_recorded(
    engine: Engine, tmp_path: Path
) -> None:
    """Outcomes are written in chunks by the batch thread: every one of a batch
    spanning several chunks lands, each with its own status and values."""
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
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Message))}
    for i in sent:
        r = rows[i]
        assert (r.status, r.provider, r.lease_owner) == ("sent", "file", None)
        assert r.provider_id and r.sent_at and r.address == f"{r.customer_id}@example.com"
    for i in gone:
        assert (rows[i].status, rows[i].error) == ("cancelled", "at send time: no_consent")
        assert rows[i].lease_expires_at is None and rows[i].provider_id is None


def test_claim_takes_at_most_its_limit(engine: Engine) -> None:
    for n in range(30):
        add_message(engine, add_customer(engine, f"l{n:02d}"))
    first = claim(engine, "w1", NOW, 10, timedelta(minutes=5))
    second = claim(engine, "w2", NOW, 10, timedelta(minutes=5))
    assert len(first) == 10 and len(second) == 10
    assert not {c.id for c in first} & {c.id for c in second}
    with engine.connect() as conn:
        owners = [r.lease_owner for r in conn.execute(select(Message).order_by(Message.id))]
    assert owners == ["w1"] * 10 + ["w2"] * 10 + [None] * 10


def test_backlog_is_prepared_by_a_helper_process(
    engine: Engine, tmp_path: Path, sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    """A full batch starts the helper process; it loads, checks and renders with
    the current templates (reloads included), and every message is sent once."""
    config = sg_config(tmp_path, sendgrid, batch_size=50)
    ids = [add_message(engine, add_customer(engine, f"cust{n:03d}")) for n in range(120)]
    # opted out after planning: cancelled by the helper's send-time checks
    add_message(engine, add_customer(engine, "gone", email_opt_in=False))
    renderer = Renderer(config)
    d = Dispatcher(engine, config, build_channels(config), renderer, lambda: CAMPAIGNS)
    with caplog.at_level("INFO", logger="engage.delivery.dispatch"):
        stats = d.run_once(NOW)
    assert [r for r in caplog.records if getattr(r, "event", "") == "dispatch_helper_started"]
    assert stats.outcomes == {"sent": 120, "cancelled": 1}
    bodies = {r.body["custom_args"]["engage_message_id"]: r.body for r in sendgrid.requests}
    assert sorted(bodies) == sorted(str(i) for i in ids)  # each once
    assert "Cust007" in bodies[str(ids[7])]["content"][1]["value"]
    assert bodies[str(ids[7])]["headers"]["List-Unsubscribe"].startswith("<https://engage.shop")

    # Batches are prepared here until the helper is up; wait for it.
    helper = d._helper
    assert helper is not None
    deadline = time.monotonic() + 60
    while not helper.ready and time.monotonic() < deadline:
        time.sleep(0.05)
    # A template edit that the dispatcher's renderer accepts reaches the helper.
    subject = tmp_path / "templates" / "winback" / "subject.j2"
    subject.write_text("Fresh subject for {{ customer.name }}\n")
    renderer.reload(CAMPAIGNS.values())
    before = d.helper_prepared
    more = [add_message(engine, add_customer(engine, f"late{n:03d}")) for n in range(50)]
    assert d.run_once(NOW).outcomes == {"sent": 50}
    assert d.helper_prepared == before + 50
    # An edit nobody checked (no reload): the helper keeps the checked version.
    subject.write_text("Unchecked {{ customer.name \n")
    last = [add_message(engine, add_customer(engine, f"last{n:03d}")) for n in range(50)]
    assert d.run_once(NOW).outcomes == {"sent": 50}
    d.close()
    assert d.helper_prepared == before + 100
    assert sendgrid.requests[-1].body["subject"].startswith("Fresh subject for Last")
    more += last
    late = [r.body for r in sendgrid.requests[-100:]]
    assert {b["custom_args"]["engage_message_id"] for b in late} == {str(i) for i in more}
    assert late[0]["subject"].startswith("Fresh subject for Late")
    with engine.connect() as conn:
        assert {r.status for r in conn.execute(select(Message)) if r.customer_id != "gone"} == {
            "sent"
        }


def test_batch_the_helper_failed_is_prepared_here(engine: Engine, tmp_path: Path) -> None:
    """If the helper process dies, its batch is prepared in this process instead
    and no further helper is started; nothing is lost or sent twice."""
    from concurrent.futures import Future

    from engage.delivery.dispatch import _Inbox
    from engage.timeutil import utcnow

    config = make_config(tmp_path)
    mid = add_message(engine, add_customer(engine, "kim"))
    d = dispatcher(engine, config)
    claimed = claim(engine, d.owner, NOW, 10, timedelta(minutes=5), wall_now=utcnow())
    broken: Future = Future()
    broken.set_exception(RuntimeError("helper died"))
    inbox = _Inbox()
    d._hand_out(claimed, CAMPAIGNS, NOW, inbox, broken)
    outcomes = inbox.take(1, 10)
    d._record(outcomes)
    d.close()
    assert [o.status for o in outcomes] == ["sent"]
    assert d._helper_url is None  # no new helper after a failure
    assert statuses(engine)[mid][0] == "sent"


HELPER_HOST = """
import sys, time
from engage.config import Config
from engage.delivery.prepare import Helper
config = Config.model_validate({"templates_dir": sys.argv[2],
                                "secrets": {"ENGAGE_SECRET_KEY": "x" * 32}})
helper = Helper(config, sys.argv[1])
while sys.argv[3] == "ready" and not helper.ready:
    time.sleep(0.05)
print("up", flush=True)
time.sleep(600)
"""


def _spawned_children(pid: int) -> list[int]:
    """Processes started by ``pid`` through multiprocessing's spawn."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"multiprocessing-fork" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("when", ["starting", "ready"])
def test_helper_exits_when_its_dispatcher_is_killed(tmp_path: Path, when: str) -> None:
    """SIGKILL leaves no cleanup to the dispatcher: the helper must notice and go,
    also when the dispatcher dies while the helper is still starting up."""
    import os
    import signal
    import subprocess
    import sys

    from .helpers import ROOT

    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            HELPER_HOST,
            f"sqlite:///{tmp_path / 'x.db'}",
            str(ROOT / "templates"),
            when,
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as host:
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "up"
        helpers = _spawned_children(host.pid)
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
    assert len(helpers) == 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(helpers[0], 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(helpers[0], signal.SIGKILL)
    pytest.fail("the helper outlived its dispatcher")


def test_send_whose_lease_is_nearly_over_is_given_back(engine: Engine, tmp_path: Path) -> None:
    """A message that waited in the queue until little of its lease is left is
    released, not sent: its row could turn ``unknown`` (and be re-queued by an
    operator) while the provider call is still going on."""
    from engage.delivery.prepare import Ready
    from engage.timeutil import utcnow

    config = make_config(tmp_path, dispatch={"lease": "40s"})  # margin: 10 s
    mid = add_message(engine, add_customer(engine, "kim"))
    d = dispatcher(engine, config)
    [msg] = claim(engine, d.owner, NOW, 10, timedelta(seconds=40), wall_now=utcnow())
    assert msg.lease_expires_at is not None
    outgoing = Outgoing(
        message_id=mid,
        channel="email",
        to="kim@example.com",
        campaign="winback-30d",
        subject="Hi",
        html="<p>Hi</p>",
        text="Hi",
    )
    late = replace(msg, lease_expires_at=utcnow() + timedelta(seconds=5))
    assert d._send_ready(Ready(late, outgoing)).status == "released"
    assert d._send_ready(Ready(msg, outgoing)).status == "sent"
    d.close()
    assert list((tmp_path / "outbox").glob("*.eml"))  # the one with time left went out


def test_helper_process_imports_no_postgresql_dialect_on_sqlite() -> None:
    """The helper starts for every backlog: on SQLite its imports (what
    ``engage.delivery.prepare`` and an SQLite engine pull in) leave PostgreSQL's dialect
    out, a fifth of them."""
    import subprocess
    import sys

    code = (
        "import sys, engage.delivery.prepare\n"
        "from engage.db import make_engine\n"
        "make_engine('sqlite://').connect().close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('sqlalchemy.dialects.postgresql')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_campaign_that_cannot_be_read_fails_its_messages_not_the_batch(
    engine: Engine, tmp_path: Path
) -> None:
    """prepare reads each campaign once per batch; one whose settings raise
    fails its own messages, and the batch's other messages are prepared."""
    from engage.delivery.prepare import Outcome, Ready, prepare

    class Broken:
        name = "broken"

        @property
        def utm(self) -> None:
            raise RuntimeError("bad settings")

    config = make_config(tmp_path)
    good = add_message(engine, add_customer(engine, "ana"))
    bad = add_message(engine, add_customer(engine, "bo"), campaign="broken")
    claimed = claim(engine, "me", NOW, 10, timedelta(minutes=5))
    items = prepare(
        engine, config, Renderer(config), claimed, {**CAMPAIGNS, "broken": Broken()}, NOW
    )
    got = {i.msg.id: i for i in items}
    assert isinstance(got[good], Ready)
    assert isinstance(got[bad], Outcome) and got[bad].status == "failed"
