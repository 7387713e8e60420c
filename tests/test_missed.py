"""A campaign has nothing to have missed before engage first saw it (issue 13, item 9).

A campaign created a minute ago with an every-minute crontab used to report
359 missed occurrences in ``engage status`` (catch-up recorded every
occurrence of the ``catch_up`` window before the latest as missed). Missed
occurrences now count only from when engage first saw the campaign.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert, select

from engage.db.models import CampaignRun, CampaignSeen
from engage.planning.catchup import RETRY_FAILED_AFTER, find_due, plan_due
from engage.planning.seen import first_seen

from .helpers import NOW
from .installed import engage
from .test_daemon_support import campaign_yaml, project
from .test_daemon_units import _campaign, _seed


def test_a_campaign_created_a_minute_ago_has_missed_nothing(tmp_path: Path, db_url: str) -> None:
    with project(tmp_path, db_url) as p:
        p.add_customers(3)
        p.write_campaign("minutely", campaign_yaml("minutely", "* * * * *"))
        out = engage("run", "--once", cwd=p.dir, env=p.env)
        assert "planned 1 occurrence(s) with 3 new messages" in out.stdout
        st = json.loads(engage("status", "--json", cwd=p.dir, env=p.env).stdout)
        assert st["missed_total"] == 0 and st["missed"] == []
        assert [state for _, state in p.runs()] == ["planned"]
        assert "missed" not in engage("status", cwd=p.dir, env=p.env).stdout


def test_a_past_send_does_not_make_the_daemon_report_the_days_since_as_missed(
    tmp_path: Path, db_url: str
) -> None:
    with project(tmp_path, db_url) as p:
        p.add_customers(2)
        p.write_campaign("hourly", campaign_yaml("hourly", "0 * * * *"))
        past = (datetime.now(UTC) - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
        at = past.strftime("%Y-%m-%dT%H:%M:%SZ")
        engage("send", "hourly", "--at", at, "--yes", cwd=p.dir, env=p.env)
        engage("run", "--once", cwd=p.dir, env=p.env)
        st = json.loads(engage("status", "--json", cwd=p.dir, env=p.env).stdout)
        assert st["missed_total"] == 0, st["missed"]


def test_occurrences_after_first_seen_are_still_missed(tmp_path: Path, engine: Engine) -> None:
    config, campaign = _campaign(tmp_path, "0 * * * *", catch_up="6h")
    seen = NOW - timedelta(hours=3, minutes=30)  # 11:30; NOW is 15:00
    assert first_seen(engine, "hourly", seen) == seen
    assert first_seen(engine, "hourly", NOW) == seen  # the first sighting sticks
    _seed(engine, seen - timedelta(minutes=30))  # 11:00 ran
    with engine.connect() as conn:
        due = find_due(conn, campaign, NOW, config.catch_up, seen)
    assert due.plan == [datetime(2026, 6, 15, 15, tzinfo=UTC)]
    assert due.missed == [datetime(2026, 6, 15, h, tzinfo=UTC) for h in (12, 13, 14)]


def test_a_new_campaign_records_nothing_missed(tmp_path: Path, engine: Engine) -> None:
    config, campaign = _campaign(tmp_path, "*/5 * * * *", catch_up="6h")
    results = plan_due(engine, config, campaign, NOW)
    assert [r.scheduled_at for r in results] == [NOW]
    with engine.connect() as conn:
        assert conn.execute(select(CampaignRun.state)).scalars().all() == ["planned"]
        assert conn.execute(select(CampaignSeen.first_seen_at)).scalar_one() == NOW


def test_campaigns_that_ran_before_were_first_seen_at_their_first_row(
    tmp_path: Path, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(CampaignRun),
            [
                {
                    "campaign": "hourly",
                    "scheduled_at": NOW - timedelta(days=2),
                    "state": "planned",
                    "counts": {},
                    "created_at": NOW - timedelta(days=2),
                }
            ],
        )
    assert first_seen(engine, "hourly", NOW) == NOW - timedelta(days=2)


def test_status_ignores_missed_rows_from_before_first_seen(tmp_path: Path, db_url: str) -> None:
    """Rows an older engage wrote for a campaign it had just met are not shown."""
    with project(tmp_path, db_url) as p:
        p.write_campaign("minutely", campaign_yaml("minutely", "* * * * *"))
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        rows = [
            {
                "campaign": "minutely",
                "scheduled_at": now - timedelta(minutes=k),
                "state": "missed" if k else "planned",
                "counts": {},
                "created_at": now,
            }
            for k in range(0, 30)
        ]
        rows.append({**rows[1], "scheduled_at": now + timedelta(minutes=5)})  # after: shown
        with p.engine.begin() as conn:
            conn.execute(insert(CampaignRun), rows)
            conn.execute(insert(CampaignSeen), [{"campaign": "minutely", "first_seen_at": now}])
        st = json.loads(engage("status", "--json", cwd=p.dir, env=p.env).stdout)
        assert st["missed_total"] == 1


def test_a_failed_occurrence_is_retried_after_a_while(tmp_path: Path, engine: Engine) -> None:
    config, campaign = _campaign(tmp_path, "0 * * * *", catch_up="6h")
    at = datetime(2026, 6, 15, 15, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(CampaignRun),
            [
                {
                    "campaign": "hourly",
                    "scheduled_at": at,
                    "state": "failed",
                    "counts": {},
                    "error": "OverflowError: boom",
                    "finished_at": NOW,
                }
            ],
        )
    soon = NOW + RETRY_FAILED_AFTER / 2
    later = NOW + RETRY_FAILED_AFTER
    with engine.connect() as conn:
        assert find_due(conn, campaign, soon, config.catch_up).plan == []
        assert find_due(conn, campaign, later, config.catch_up).plan == [at]
    [result] = plan_due(engine, config, campaign, later)
    assert result.scheduled_at == at and not result.already_planned
    with engine.connect() as conn:
        row = conn.execute(select(CampaignRun.state, CampaignRun.error)).one()
    assert tuple(row) == ("planned", None)
