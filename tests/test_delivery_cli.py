"""Delivery through the real `engage` command and the real SDKs against the fakes:
send windows after downtime, refused credentials, re-queueing, concurrent sends.

Sending happens on the real clock here, so customers' time zones are picked
relative to it (``midday_zone``), or spread over every offset and checked
against the moment each message went out.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import Engine, func, insert, select

from engage.campaigns.loader import load_campaign_file
from engage.config import load_config
from engage.db import make_engine, upgrade
from engage.db.models import Customer, Message
from engage.planning.planner import plan_occurrence
from engage.testing import FakeSendGrid, FakeTwilio

from .helpers import ROOT, SECRET, add_message, midday_zone
from .installed import ENGAGE as INSTALLED_ENGAGE
from .test_cli import run

SG_KEY = "SG.cli-test-key"
TW_SID, TW_TOKEN = "AC" + "7" * 32, "cli-test-token"

# One zone per UTC offset (and the half and quarter hours): at any moment of
# the day, some of these customers are inside their send window and some not.
ZONES = [f"Etc/GMT{'+' if h < 0 else '-'}{abs(h)}" if h else "UTC" for h in range(-12, 15)] + [
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "America/St_Johns",
    "Pacific/Chatham",
    "Asia/Tehran",
    "Australia/Sydney",
    "America/Los_Angeles",
]


def _project(tmp_path: Path, db_url: str, settings: dict[str, Any]) -> tuple[Path, Engine]:
    proj = tmp_path / "proj"
    run(["init", str(proj)], tmp_path)
    for path in (proj / "campaigns").glob("*.yaml"):
        path.unlink()  # only this test's campaigns
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.update(settings)
    (proj / "config.yaml").write_text(yaml.safe_dump(config))
    engine = make_engine(db_url)
    upgrade(engine)
    return proj, engine


def _env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGAGE_", "SENDGRID"))}
    env.update(
        ENGAGE_DATABASE_URL=db_url,
        ENGAGE_SECRET_KEY=SECRET,
        SENDGRID_API_KEY=SG_KEY,
        TWILIO_ACCOUNT_SID=TW_SID,
        TWILIO_AUTH_TOKEN=TW_TOKEN,
        **extra,
    )
    return env


def _campaign(proj: Path, name: str, cron: str, channels: str = "[email]") -> Path:
    path = proj / "campaigns" / f"{name}.yaml"
    path.write_text(
        f"name: {name}\n"
        f'schedule: {{cron: "{cron}", timezone: UTC}}\n'
        "audience: {}\n"
        f"channels: {channels}\ntemplate: winback\nreentry: once\n"
        "exempt_from_frequency_cap: true\n"
    )
    return path


def _customers(engine: Engine, zones: list[str], *, sms: bool = False) -> None:
    created = datetime.now(UTC) - timedelta(days=400)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "id": f"c{n:03d}",
                    "email": f"c{n:03d}@example.com",
                    "phone": f"+1202555{n:04d}" if sms else None,
                    "timezone": zone,
                    "email_opt_in": True,
                    "sms_opt_in": sms,
                    "attributes": {},
                    "created_at": created,
                }
                for n, zone in enumerate(zones)
            ],
        )


def _counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(Message.status, func.count()).group_by(Message.status))
        return {s: int(n) for s, n in rows}


def test_after_downtime_no_sms_goes_out_outside_the_recipients_window(
    tmp_path: Path, db_url: str
) -> None:
    """The daemon planned an occurrence five hours ago (each SMS due at its
    window's opening as of then), went down, and comes back: `engage run --once`
    sends only to customers whose window is open now, and the others wait for
    their next opening. Checked over every UTC offset."""
    with FakeTwilio(account_sid=TW_SID, auth_token=TW_TOKEN) as tw:
        settings = {
            "timezone": "UTC",
            "channels": {
                "email": "file",
                "sms": "twilio",
                "twilio": {"api_base": tw.url, "from_number": "+15035550100"},
            },
        }
        proj, engine = _project(tmp_path, db_url, settings)
        try:
            _customers(engine, ZONES, sms=True)
            before = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=5)
            path = _campaign(proj, "texts", f"{before.minute} {before.hour} * * *", "[sms]")
            config = load_config(proj / "config.yaml", environ=_env(db_url))
            campaign = load_campaign_file(path, config)
            plan_occurrence(engine, config, campaign, before, now=before)  # before the outage
            run(["run", "--once"], proj, _env(db_url))
            with engine.connect() as conn:
                got = conn.execute(
                    select(Message.status, Message.sent_at, Customer.timezone).join(Customer)
                ).all()
        finally:
            engine.dispose()
    sent = [(at, zone) for status, at, zone in got if status == "sent"]
    assert len(sent) == len(tw.requests) and 0 < len(sent) < len(ZONES)
    for at, zone in sent:
        local = at.astimezone(ZoneInfo(zone)).time()
        assert "09:00" <= local.strftime("%H:%M") < "20:00", (zone, local)
    assert {status for status, _, _ in got} == {"sent", "planned"}


def test_refused_credentials_stop_send_and_run_once_with_one_line(
    tmp_path: Path, db_url: str
) -> None:
    with FakeSendGrid(api_key="SG.the-right-key") as sg:
        settings = {"channels": {"email": "sendgrid", "sendgrid": {"api_host": sg.url}}}
        proj, engine = _project(tmp_path, db_url, settings)
        try:
            _customers(engine, [midday_zone(datetime.now(UTC))] * 30)
            _campaign(proj, "blast", "0 0 1 1 *")
            env = _env(db_url, ENGAGE_DISPATCH__WORKERS="4")
            out = run(["send", "blast", "--yes"], proj, env, code=1)
            [line] = [x for x in out.stderr.splitlines() if x.strip()]
            assert line.startswith("error: email stopped, its messages stay planned: ")
            assert "SENDGRID_API_KEY" in line and SG_KEY not in line
            assert _counts(engine) == {"planned": 30}
            with engine.connect() as conn:
                untouched = conn.execute(
                    select(Message.attempts, Message.error, Message.claim).distinct()
                ).all()
            assert untouched == [(0, None, None)]
            assert len(sg.requests) <= 4  # at most what was in flight when it stopped
            again = run(["run", "--once"], proj, env, code=1)
            assert [x for x in again.stderr.splitlines() if x.startswith("error:")] == [line]
            assert _counts(engine) == {"planned": 30}
        finally:
            engine.dispose()


def test_outbox_requeue_by_filters_shows_the_count_and_asks_first(
    tmp_path: Path, db_url: str
) -> None:
    proj, engine = _project(tmp_path, db_url, {})
    try:
        _customers(engine, ["UTC"] * 6)
        now = datetime.now(UTC)
        old = now - timedelta(days=2)
        ids = {
            "u1": add_message(engine, "c000", status="unknown", key="1", updated_at=now),
            "u2": add_message(engine, "c001", status="unknown", key="2", updated_at=old),
            "u3": add_message(engine, "c002", status="unknown", campaign="other", updated_at=now),
            "f1": add_message(engine, "c003", status="failed", key="4", updated_at=now),
            "s1": add_message(engine, "c004", status="sent", key="5", updated_at=now),
        }
        env = _env(db_url)
        asks = run(
            ["outbox", "requeue", "--status", "unknown", "--campaign", "winback-30d"],
            proj,
            env,
            code=1,
        )
        assert "2 messages match" in asks.stderr and "--yes" in asks.stderr
        assert _counts(engine)["unknown"] == 3  # nothing moved without confirmation
        since = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        done = run(
            [
                "outbox",
                "requeue",
                "--status",
                "unknown",
                "--campaign",
                "winback-30d",
                "--since",
                since,
                "--yes",
            ],
            proj,
            env,
        )
        assert "re-queued 1 messages" in done.stdout
        both = run(
            ["outbox", "requeue", "--status", "unknown", "--status", "failed", "--yes"], proj, env
        )
        assert "re-queued 3 messages" in both.stdout
        with engine.connect() as conn:
            got = dict(conn.execute(select(Message.id, Message.status)).all())
        assert {k: got[v] for k, v in ids.items()} == {
            "u1": "planned",
            "u2": "planned",
            "u3": "planned",
            "f1": "planned",
            "s1": "sent",
        }
        assert (
            "nothing re-queued"
            in run(["outbox", "requeue", "--status", "expired", "--yes"], proj, env).stdout
        )
        bad = run(["outbox", "requeue", "--status", "sent", "--yes"], proj, env, code=1)
        assert "sent cannot be re-queued" in bad.stderr
        assert "say which messages" in run(["outbox", "requeue"], proj, env, code=1).stderr
        named = run(["outbox", "requeue", str(ids["s1"]), "424242"], proj, env, code=1)
        assert f"{ids['s1']}: not requeueable (sent)" in named.stdout
        assert "424242: not found" in named.stdout
    finally:
        engine.dispose()


def test_concurrent_sends_of_one_campaign_agree_on_what_waits(tmp_path: Path, db_url: str) -> None:
    """Two `engage send` of the same occurrence at once: one plans, the other
    waits for it and finds it planned; both report the same messages waiting
    for their windows, the ones the database holds."""
    proj, engine = _project(tmp_path, db_url, {"timezone": "UTC"})
    try:
        now = datetime.now(UTC)
        awake, asleep = midday_zone(now), midday_zone(now + timedelta(hours=12))
        _customers(engine, [awake, asleep] * 150)
        _campaign(proj, "blast", "0 0 1 1 *")
        at = now.replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
        cmd = [INSTALLED_ENGAGE, "send", "blast", "--at", at, "--yes"]
        procs = [
            subprocess.Popen(cmd, cwd=proj, env=_env(db_url), stdout=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        with engine.connect() as conn:
            waiting = conn.execute(
                select(func.count()).where(Message.status == "planned")
            ).scalar_one()
        assert waiting == 150
        assert sum("was already planned" in out for out in outs) == 1, outs
        for out in outs:
            assert "150 wait for their send window" in out, out
        assert _counts(engine) == {"sent": 150, "planned": 150}
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _no_engage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ENGAGE_") and name != "ENGAGE_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
