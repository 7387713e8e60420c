"""The daemon's parts in-process: log format and masking, catch-up decisions, job sync, locks."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, select

from engage.campaigns.loader import load_campaign_file
from engage.daemon.scheduler import campaign_jobs, make_scheduler, sync_campaigns
from engage.db.models import CampaignRun
from engage.logs import mask_pii, setup_logging
from engage.planning.catchup import find_due, plan_due

from .helpers import make_config
from .test_daemon_support import campaign_yaml

NOW = datetime(2026, 6, 15, 12, 30, tzinfo=UTC)


def test_mask_pii() -> None:
    assert mask_pii("to ann.lee@example.com now") == "to a***@example.com now"
    assert mask_pii("sms +12025550123.") == "sms +1******0123."
    assert mask_pii("order 12345 at 10:00") == "order 12345 at 10:00"


def test_json_log_lines_are_masked_and_never_carry_secrets() -> None:
    stream = io.StringIO()
    handler = setup_logging("json", secrets=["SG.super-secret"], stream=stream)
    try:
        log = logging.getLogger("engage.test")
        log.info(
            "sent to bob@example.com",
            extra={"event": "message_sent", "message_id": 7, "to": "+447700900123"},
        )
        log.warning("key SG.super-secret leaked?", extra={"event": "oops"})
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "message_sent" and first["level"] == "INFO"
    assert first["message_id"] == 7 and first["to"] == "+4*******0123"
    assert first["msg"] == "sent to b***@example.com" and first["ts"].endswith("Z")
    assert "SG.super-secret" not in second["msg"] and "***" in second["msg"]


def test_text_log_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    handler = setup_logging("text", mask=False, stream=stream)
    try:
        logging.getLogger("engage.test").info(
            "x", extra={"event": "heartbeat", "outbox": {"sent": 3}, "to": "a@example.com"}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    assert " INFO    heartbeat " in line and 'outbox={"sent": 3}' in line
    assert "to=a@example.com" in line  # --show-pii


def _campaign(tmp_path: Path, cron: str, **cfg: object):  # noqa: ANN202
    config = make_config(tmp_path, **cfg)
    path = tmp_path / "campaigns" / "hourly.yaml"
    path.write_text(campaign_yaml("hourly", cron))
    return config, load_campaign_file(path, config)


def _seed(engine: Engine, at: datetime, state: str = "planned") -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(CampaignRun),
            [{"campaign": "hourly", "scheduled_at": at, "state": state, "counts": {}}],
        )


def test_after_an_outage_only_the_latest_occurrence_runs(tmp_path: Path, engine: Engine) -> None:
    config, campaign = _campaign(tmp_path, "0 * * * *", catch_up="6h")
    _seed(engine, NOW - timedelta(hours=3, minutes=30))  # 09:00
    with engine.connect() as conn:
        due = find_due(conn, campaign, NOW, config.catch_up)
    # 10:00 and 11:00 are within catch_up but coalesce into the latest one, 12:00
    assert due.plan == [datetime(2026, 6, 15, 12, tzinfo=UTC)]
    assert due.missed == [datetime(2026, 6, 15, h, tzinfo=UTC) for h in (10, 11)]


def test_a_new_campaign_looks_back_only_catch_up(tmp_path: Path, engine: Engine) -> None:
    config, campaign = _campaign(tmp_path, "0 * * * *", catch_up="20m")
    with engine.connect() as conn:
        due = find_due(conn, campaign, NOW, config.catch_up)
    assert due.plan == [] and due.missed == []  # 12:00 is 30 min old: too late, nothing missed


def test_an_interrupted_planning_is_resumed(tmp_path: Path, engine: Engine) -> None:
    config, campaign = _campaign(tmp_path, "0 * * * *", catch_up="6h")
    at = datetime(2026, 6, 15, 12, tzinfo=UTC)
    _seed(engine, at, state="planning")  # a process died while planning it
    results = plan_due(engine, config, campaign, NOW)
    assert [r.scheduled_at for r in results] == [at]
    with engine.connect() as conn:
        assert conn.execute(select(CampaignRun.state)).scalars().all() == ["planned"]
    assert plan_due(engine, config, campaign, NOW) == []  # nothing left to do


def test_sync_campaigns_adds_reschedules_and_removes(tmp_path: Path) -> None:
    _, hourly = _campaign(tmp_path, "0 * * * *")
    daily = hourly.model_copy(
        update={"schedule": hourly.schedule.model_copy(update={"cron": "0 9 * * *"})}
    )
    off = hourly.model_copy(update={"enabled": False})
    calls: list[str] = []
    scheduler = make_scheduler()
    scheduler.start(paused=True)
    try:
        sync = sync_campaigns(scheduler, {"hourly": hourly}, calls.append, timedelta(hours=6))
        assert sync.added == ["hourly"]
        job = scheduler.get_job("campaign:hourly")
        assert job.misfire_grace_time == 6 * 3600 and job.coalesce and job.max_instances == 1
        job.func(*job.args)  # the job plans its campaign by name
        assert calls == ["hourly"]
        assert not sync_campaigns(scheduler, {"hourly": hourly}, calls.append, timedelta(hours=6))
        sync = sync_campaigns(scheduler, {"hourly": daily}, calls.append, timedelta(hours=6))
        assert sync.rescheduled == ["hourly"]
        nxt = campaign_jobs(scheduler)["hourly"]
        assert nxt is not None and (nxt.hour, nxt.minute) == (9, 0)
        sync = sync_campaigns(scheduler, {"hourly": off}, calls.append, timedelta(hours=6))
        assert sync.removed == ["hourly"] and campaign_jobs(scheduler) == {}
    finally:
        scheduler.shutdown(wait=False)
