"""``engage report`` as a user runs it: a real subprocess over a real project."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from engage.config import Config
from engage.report import Period, build_report

from .test_cli import run
from .test_report import FIRST, LAST, NOW, load, make_shop


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``engage demo`` with its default size: the shop every section should show."""
    tmp = tmp_path_factory.mktemp("demo")
    run(["demo", "shop"], tmp)
    return tmp / "shop"


def test_report_after_the_demo_has_every_section(demo: Path) -> None:
    data = json.loads(run(["--config", "config.yaml", "report", "--json"], demo).stdout)
    assert data["version"] == 1 and not data["period"]["partial"]
    shop = data["shop"]
    assert shop["customers"]["total"] > 0 and shop["activity"]["active"] > 0
    assert shop["retention"]["rate"] is not None and shop["retention"]["cohort_rate"] is not None
    assert shop["activity"]["churn_rate"] is not None
    for key in (
        "orders",
        "buyers",
        "purchase_frequency",
        "repeat_purchase_rate",
        "loyal_customer_rate",
    ):
        assert shop["purchases"][key], key
    assert shop["purchases"]["average_order_value"] not in (None, "0.00")
    assert all(shop["points"][k] for k in ("earned", "redeemed", "expired", "redemption_rate"))
    assert shop["nps"]["responses"] > 0 and shop["nps"]["score"] is not None
    names = {c["name"] for c in data["campaigns"]}
    assert names == {"winback-30d", "points-expiring", "vip-thanks", "detractor-recovery"}
    for c in data["campaigns"]:
        assert c["sent"] > 0 and c["recipients"]["members"] == c["sent"], c["name"]
        assert c["attribution_windows_open"] == 0, c["name"]  # the demo's sends are settled
    winback = next(c for c in data["campaigns"] if c["name"] == "winback-30d")
    assert winback["held_out"] >= 30 and winback["lift"]["status"] == "ok"
    assert winback["recipients"]["conversions"] > 0 and winback["holdout"]["members"] >= 30
    vip = next(c for c in data["campaigns"] if c["name"] == "vip-thanks")
    assert vip["lift"]["status"] == "no_holdout"
    assert sum(b["orders"] for b in data["series"]["buckets"]) == shop["purchases"]["orders"]
    # the same report as tables
    text = run(["--config", "config.yaml", "report"], demo, {"COLUMNS": "160"}).stdout
    for title in (
        "Customers",
        "Purchases",
        "Loyalty points",
        "Net promoter score",
        "Campaigns",
        "Conversions within 7d of the planned send",
        "retention rate",
        "winback-30d",
    ):
        assert title in text, title
    assert "no holdout" in text


def test_report_csv_and_a_campaign_filter(demo: Path) -> None:
    out = run(["report", "--csv", "--campaign", "winback-30d"], demo).stdout
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["section", "campaign", "figure", "value"]
    figures = {(r[0], r[1], r[2]): r[3] for r in rows[1:]}
    assert len(figures) == len(rows) - 1  # one row per figure
    assert {r[1] for r in rows[1:] if r[0] == "campaign"} == {"winback-30d"}
    assert float(figures[("shop", "", "retention.rate")]) > 0
    assert figures[("campaign", "winback-30d", "lift.status")] == "ok"
    assert figures[("campaign", "winback-30d", "lift.significant")] in ("true", "false")
    assert int(figures[("campaign", "winback-30d", "sent")]) > 0


def test_report_refuses_bad_input(demo: Path) -> None:
    err = run(["report", "--campaign", "nope"], demo, code=1).stderr
    assert "no campaign named nope" in err and "winback-30d" in err
    assert "not a date" in run(["report", "--from", "2026-13-01"], demo, code=1).stderr
    assert (
        "after --to"
        in run(["report", "--from", "2026-02-02", "--to", "2026-02-01"], demo, code=1).stderr
    )
    assert "future" in run(["report", "--from", "2999-01-01"], demo, code=1).stderr
    run(["report", "--json", "--csv"], demo, code=2)


def test_cli_json_is_the_library_report(tmp_path: Path, db_url: str, engine: Engine) -> None:
    """On SQLite and PostgreSQL the command prints exactly what build_report returns."""
    load(engine, make_shop(7, n=60))
    (tmp_path / "config.yaml").write_text("timezone: America/New_York\n")
    env = {"ENGAGE_DATABASE_URL": db_url}
    args = ["report", "--json", "--from", FIRST.isoformat(), "--to", LAST.isoformat()]
    got = json.loads(run(args, tmp_path, env).stdout)
    config = Config(timezone="America/New_York")
    want = build_report(
        engine, config, Period.of_days(FIRST, LAST, config.zone, NOW), datetime.now(UTC)
    ).to_json()
    for data in (got, want):
        data.pop("generated_at")
        for c in data["campaigns"]:
            c.pop("attribution_windows_open")  # counted as of now
    assert got == want
    assert got["campaigns"] and got["shop"]["purchases"]["orders"] > 0


def _shape(value: object, skip: tuple[str, ...] = ("statuses",)) -> object:
    """Keys all the way down (lists by their first item); values do not matter."""
    if isinstance(value, dict):
        return {k: None if k in skip else _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return None


def test_the_json_shape_is_the_documented_one(demo: Path) -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
    example = docs.split("**JSON** (`--json`)", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    data = json.loads(run(["report", "--json"], demo).stdout)
    assert _shape(data) == _shape(json.loads(example))
