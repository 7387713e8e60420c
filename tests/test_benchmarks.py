"""The benchmark runner at a tiny scale, so it never rots (SPEC §11).

It asserts that a run completes and reports every figure, never timings.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from benchmarks.__main__ import main
from benchmarks.runner import GROUPS, run
from engage.db import make_engine
from engage.db.models import CampaignRun, Interaction, Message, Suppression, WebhookEvent

GROUP_ROWS = {
    "audience": 7,
    "planning": 1,
    "rendering": 1,
    "dispatch": 2,
    "dispatch-latency": 3,  # and 3 more on PostgreSQL: 1, 2 and 3 worker processes
    "memory": 1,
    "report": 10,
    "ui": 1,
    "http": 2,
    "import": 7,
}


def _leftovers(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return sum(
                conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (Message.__table__, CampaignRun.__table__, Suppression.__table__)
            )
    finally:
        engine.dispose()


def test_small_run_reports_every_figure(db_url: str, tmp_path: Path) -> None:
    out = io.StringIO()
    report_path = tmp_path / "bench.json"
    run(db_url, scale=0.001, only=None, json_path=str(report_path), now="2026-03-01", out=out)

    report = json.loads(report_path.read_text())
    assert report["customers"] == 1000
    assert report["as_of"] == "2026-03-01T00:00:00Z"
    cpu = report["machine"]["cpu_check_s"]
    assert 0 < cpu["before"] < 60 and 0 < cpu["after"] < 60
    names = [r["name"] for r in report["results"]]
    workers = 3 if report["backend"] == "postgresql" else 0
    assert len(names) == sum(GROUP_ROWS.values()) + workers
    assert set(GROUP_ROWS) == set(GROUPS)
    for row in report["results"]:
        assert row["figure"] > 0 and row["target"], row
        if "peak RSS (largest" not in row["name"]:
            assert row["reference"] is not None and row["reference"] > 0, row
    # the audience rows compare engage's set with the hand-written SQL's
    audience = [r for r in report["results"] if r["name"].startswith("audience")]
    assert all(r["details"].get("same_set_as_reference", True) for r in audience)
    assert all(r["details"]["matched"] > 0 for r in audience)
    # every hand-written reference selects engage's set; the facts one is among them
    compared = [r for r in audience if "references_agree" in r["details"]]
    assert len(compared) == 6 and all(all(r["details"]["references_agree"].values()) for r in compared)
    assert all("facts" in r["details"]["references_s"] for r in compared if "quiet" in r["name"])
    imports = [r for r in report["results"] if r["name"].startswith("import ")]
    assert all(r["details"]["all_rows_imported"] for r in imports if "engage" in r["details"])
    planning = next(r for r in report["results"] if r["name"].startswith("planning"))
    counts = planning["details"]["counts"]
    for reason in ("send", "held_out", "reentry", "frequency_cap"):
        assert counts.get(reason, 0) > 0, (reason, counts)
    dispatch = [r for r in report["results"] if r["name"].startswith("dispatch SendGrid")]
    dispatch += [r for r in report["results"] if r["name"].startswith("dispatch Twilio")]
    assert all(r["details"]["outcomes"] == {"sent": r["details"]["planned"]} for r in dispatch)
    latency = [r for r in report["results"] if "provider answers in" in r["name"]]
    for r in latency:
        for run_ in (r["details"]["at_once"], r["details"]["late"]):
            assert run_["outcomes"] == {"sent": run_["planned"]}, run_
        rounds = r["details"]["rounds"]  # three rounds alternating which latency goes first
        assert [x["first"] for x in rounds] == ["at once", "late", "at once"]
        assert abs(r["ratio"] - sorted(x["ratio"] for x in rounds)[1]) < 0.006  # the median
    for r in report["results"]:  # PostgreSQL: 1, 2 and 3 worker processes sent everything
        if "worker process" in r["name"]:
            assert r["details"]["outcomes"] == {"sent": r["details"]["planned"]}, r
    for row in dispatch:  # three engage/bare pairs, each sending every planned message
        rounds = row["details"]["rounds"]
        assert len(rounds) == 3 and all(r["outcomes"] == {"sent": r["planned"]} for r in rounds)
        assert [r["engage_first"] for r in rounds] == [True, False, True]  # alternating
        assert abs(row["ratio"] - sorted(r["ratio"] for r in rounds)[1]) < 0.006  # the median
    # the HTTP rows: every request answered 200 and everything sent was stored
    http = {r["name"].split(" (")[0]: r for r in report["results"] if r["name"].startswith("http")}
    assert set(http) == {"http SendGrid webhook", "http ingest API"}
    for row in http.values():
        for pair in row["details"]["rounds"]:
            for side in ("engage", "bare"):
                assert set(pair[side]["statuses"]) == {"200"} and not pair[side]["errors"], pair
    for pair in http["http SendGrid webhook"]["details"]["rounds"]:
        states = pair["engage"]["states"]
        assert set(states) == {"delivered", "bounced"} and states["bounced"] > 0, states
    for pair in http["http ingest API"]["details"]["rounds"]:
        assert pair["engage"]["stored"] == pair["engage"]["items"]
    # the printed table carries every figure, and the run removed what it added
    table = out.getvalue()
    assert all(name in table for name in names)
    assert _leftovers(db_url) == 0
    engine = make_engine(db_url)
    with engine.connect() as conn:  # the HTTP group's writes are gone too
        assert conn.execute(select(func.count()).select_from(WebhookEvent)).scalar_one() == 0
        assert conn.execute(
            select(func.count()).where(Interaction.external_id.like("%bench-%"))
        ).scalar_one() == 0
    engine.dispose()


def test_cli_runs_one_group_on_an_existing_data_set(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    assert main(["generate", "--db", url, "--scale", "0.0005", "--now", "2026-03-01"]) == 0
    report_path = tmp_path / "audience.json"
    main(["run", "--db", url, "--only", "audience", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert report["scale"] == pytest.approx(0.0005)
    assert report["as_of"] == "2026-03-01T00:00:00Z"  # derived from the data set
    assert len(report["results"]) == GROUP_ROWS["audience"]
    assert "audience quiet_for (count)" in capsys.readouterr().out
    assert report["results"][0]["details"]["engage_read_facts"]
