"""One campaign's failure never stops the others (issue 13, item 4; SPEC §12).

A campaign that passes ``validate`` can still fail when it runs: a database
that refuses its rows (a trigger), or an audience the database cannot
evaluate. Before, such a campaign stopped ``engage run
--once`` before the other campaigns were planned or anything was sent, and
crashed ``calendar`` and ``dry-run`` with a traceback. Now its error is
logged, recorded on its ``campaign_run`` row and shown, and the rest plan and
send. Driven through the installed ``engage`` command on both backends.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select, text

from engage.db.models import CampaignRun

from .installed import engage
from .test_daemon_support import Project, campaign_yaml, cron_at, project, wait_for


def _refuse_bad_messages(p: Project) -> None:
    """A database that refuses the campaign's messages: a trigger, as a shop's
    DBA might add, makes planning fail when it writes them (counting and dry
    runs still work). Every value a campaign file can hold is checked by
    ``validate``, so the fault that reaches a run comes from the database."""
    with p.engine.begin() as conn:
        if p.engine.dialect.name == "sqlite":
            conn.execute(text(
                "CREATE TRIGGER refuse_bad BEFORE INSERT ON message WHEN NEW.campaign = 'bad' "
                "BEGIN SELECT RAISE(ABORT, 'value out of range for this shop'); END"
            ))
            return
        conn.execute(text(
            "CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.campaign = 'bad' THEN RAISE EXCEPTION 'value out of range for this shop'; "
            "END IF; RETURN NEW; END $$"
        ))
        conn.execute(text(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON message "
            "FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
        ))


def _bad_campaign(p: Project, cron: str) -> str:
    _refuse_bad_messages(p)
    return campaign_yaml("bad", cron)


def _runs(engine: Engine) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(CampaignRun.campaign, CampaignRun.state, CampaignRun.error))
        return {c: (s, e) for c, s, e in rows}


def test_run_once_calendar_dry_run_and_status_go_on_without_the_bad_campaign(
    tmp_path: Path, db_url: str
) -> None:
    with project(tmp_path, db_url) as p:
        p.add_customers(10)
        cron = cron_at(datetime.now(UTC))
        p.write_campaign("bad", _bad_campaign(p, cron))
        p.write_campaign("good", campaign_yaml("good", cron))
        p.write_campaign("a-good", campaign_yaml("a-good", cron))
        customers = 10
        engage("validate", cwd=p.dir, env=p.env)  # nothing a validator can see

        once = engage("run", "--once", cwd=p.dir, env=p.env, code=1)
        assert f"with {2 * customers} new messages" in once.stdout
        assert f"sent: {2 * customers}" in once.stdout
        assert "1 campaign(s) failed" in once.stdout
        assert "error: campaign bad at " in once.stderr
        assert len(p.fake.requests) == 2 * customers
        runs = _runs(p.engine)
        assert runs["good"] == ("planned", None) and runs["a-good"] == ("planned", None)
        state, error = runs["bad"]
        assert state == "failed" and error, runs
        assert "out of range for this shop" in error

        status = json.loads(engage("status", "--json", cwd=p.dir, env=p.env).stdout)
        by_name = {c["name"]: c for c in status["campaigns"]}
        assert by_name["bad"]["last_state"] == "failed" and by_name["bad"]["error"] == error
        assert by_name["good"]["error"] is None and by_name["good"]["next_run"]
        assert f"failed: bad: {error}" in engage("status", cwd=p.dir, env=p.env).stdout

        assert "matched: " in engage("dry-run", "good", cwd=p.dir, env=p.env).stdout

        # a later run sends nothing twice, and leaves the failed occurrence alone for a
        # while (it is retried after RETRY_FAILED_AFTER, within catch_up)
        again = engage("run", "--once", cwd=p.dir, env=p.env)
        assert "planned 0 occurrence(s)" in again.stdout
        assert len(p.fake.requests) == 2 * customers
        assert _runs(p.engine)["bad"][0] == "failed"


def test_the_daemon_keeps_planning_and_sending_when_one_campaign_fails(
    tmp_path: Path, db_url: str
) -> None:
    with project(tmp_path, db_url) as p:
        p.add_customers(10)
        customers = 10
        cron = cron_at(datetime.now(UTC))
        p.write_campaign("bad", _bad_campaign(p, cron))
        p.write_campaign("good", campaign_yaml("good", cron))
        d = p.start()
        wait_for("the good campaign sent", lambda: p.counts().get("sent") == customers, daemons=[d])
        wait_for("the failure logged", lambda: d.named("occurrence_failed"), daemons=[d])
        [event] = d.named("occurrence_failed")
        assert event["campaign"] == "bad" and event["level"] == "ERROR"
        assert _runs(p.engine)["bad"][0] == "failed"
        # a campaign added while the bad one keeps failing is planned and sent too
        p.write_campaign("later", campaign_yaml("later", cron))
        wait_for("the new campaign sent", lambda: p.counts().get("sent") == 2 * customers, daemons=[d])
        assert p.stop(d) == 0
        assert "Traceback" not in d.log_text()


def test_the_calendar_leaves_out_a_campaign_the_database_cannot_evaluate(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """A campaign built in Python skips the file checks: a threshold beyond
    SQLite's integers fails its audience count, and the calendar lists the
    others and says which one it left out and why."""
    from datetime import timedelta

    from engage.campaigns.schema import Campaign
    from engage.planning.calendar import upcoming

    from .helpers import make_config

    def campaign(name: str) -> Campaign:
        return Campaign.model_validate({
            "name": name,
            "schedule": {"cron": "0 10 * * *", "timezone": "UTC"},
            "audience": {"min_points_balance": 5},
            "channels": ["email"],
            "template": "winback",
        })

    good = campaign("good")
    bad = campaign("bad")
    bad = bad.model_copy(
        update={"audience": bad.audience.model_copy(update={"min_points_balance": 10**20})}
    )
    errors: list[tuple[str, str]] = []
    start = datetime(2026, 3, 1, tzinfo=UTC)
    got = upcoming(sqlite_engine, make_config(tmp_path), [bad, good], start, 2, errors=errors)
    assert [(e.campaign, e.at) for e in got] == [
        ("good", start + timedelta(hours=10)),
        ("good", start + timedelta(days=1, hours=10)),
    ]
    [(name, why)] = errors
    assert name == "bad" and "OverflowError" in why
