"""Imports under ordinary mistakes lose nothing silently (issue 13, item 7).

Each test drives the installed ``engage`` command in a temporary project on
SQLite and PostgreSQL: an unclosed CSV quote, phone numbers of other
countries, typed spreadsheet columns, audiences that match nobody, rows
dated in the future, and Ctrl-C in the middle of an import.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from engage.campaigns.audience import count_audience
from engage.campaigns.schema import Audience
from engage.config import Config
from engage.db.models import Customer, Interaction

ROOT = Path(__file__).resolve().parent.parent
ENGAGE = str(Path(sys.executable).parent / "engage")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def engage(project: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    env["ENGAGE_SECRET_KEY"] = "test-secret-key-0123456789abcdef"
    return subprocess.run(
        [ENGAGE, "--config", str(project / "config.yaml"), *args],
        capture_output=True,
        text=True,
        cwd=project,
        env=env,
        timeout=timeout,
    )


def problems(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the log lines (stderr is not a terminal here)."""
    return [line for line in done.stderr.splitlines() if " INFO " not in line]


@pytest.fixture
def project(tmp_path: Path, db_url: str, engine: Engine) -> Path:
    (tmp_path / "config.yaml").write_text(f"database_url: {json.dumps(db_url)}\n")
    return tmp_path


def rows(engine: Engine, model: Any) -> dict[str, dict[str, Any]]:
    table = model.__table__
    key = "id" if model is Customer else "external_id"
    with engine.connect() as conn:
        return {r[key]: dict(r) for r in conn.execute(select(table)).mappings()}


def test_an_unclosed_quote_is_an_error_naming_its_line(project: Path, engine: Engine) -> None:
    # A lenient CSV reader reads lines 3-5 as one name: "1 read, 1 imported".
    (project / "swallow.csv").write_text('id,first_name\nc1,Ann\nc2,"Bob\nc3,Cy\nc4,Dee\n')
    done = engage(project, "import", "customers", "swallow.csv")
    assert done.returncode == 0, done.stderr
    assert problems(done) == [
        "swallow.csv:3: csv: the quote opened on line 3 is never closed: lines 3-5"
        " (to the end of the file) were not imported"
    ]
    assert done.stdout.startswith("customers: 2 read, 1 imported")
    assert set(rows(engine, Customer)) == {"c1"}

    # A stray quote closed later makes a name out of two lines: refused, not imported.
    (project / "stray.csv").write_text(
        'id,first_name,last_name\nd1,Ann,Lee\nd2,"Bob,Smith\nd3,Cy",Jones\nd4,Dee,Doe\n'
    )
    done = engage(project, "import", "customers", "stray.csv")
    assert problems(done) == [
        "stray.csv:3: first_name: contains a line break: the quote opened on line 3 runs to"
        " line 4; is it closed where it should be?"
    ]
    assert set(rows(engine, Customer)) == {"c1", "d1", "d4"}


def test_a_bad_phone_drops_the_phone_not_the_customer(project: Path, engine: Engine) -> None:
    (project / "customers.csv").write_text(
        "id,email,phone,country\n"
        "p1,p1@example.com,555-12,US\n"  # not a number anywhere
        "p2,p2@example.com,06 12 34 56 78,FR\n"  # French, written the French way
        "p3,p3@example.com,020 7946 0123,gb\n"  # British, lower-case country code
        "p4,p4@example.com,(202) 555-0143,Deutschland\n"  # no ISO code: the default region
        "p5,p5@example.com,06 12 34 56 78,\n"  # French, but no country: not valid in the US
    )
    done = engage(project, "import", "customers", "customers.csv")
    assert done.returncode == 0, done.stderr
    assert problems(done) == [
        "customers.csv:2: warning: phone: not a valid phone number '555-12' (region US from the"
        " country column); the customer is imported without it",
        "customers.csv:6: warning: phone: not a valid phone number '06 12 34 56 78' (default"
        " region US); the customer is imported without it",
    ]
    assert "5 imported" in done.stdout and "warnings: 2 phone numbers dropped" in done.stdout
    got = rows(engine, Customer)
    assert {cid: c["phone"] for cid, c in got.items()} == {
        "p1": None,
        "p2": "+33612345678",
        "p3": "+442079460123",
        "p4": "+12025550143",
        "p5": None,
    }
    assert got["p1"]["email"] == "p1@example.com"
    # ... so their interactions are not "unknown customer" either
    (project / "interactions.csv").write_text(
        "customer_id,kind,occurred_at\np1,order,2026-02-01\np5,visit,2026-02-02\n"
    )
    done = engage(project, "import", "interactions", "interactions.csv")
    assert "2 imported" in done.stdout and problems(done) == [], done.stderr


def test_spreadsheet_columns_are_typed_so_where_matches(project: Path, engine: Engine) -> None:
    (project / "customers.csv").write_text(
        "id,vip,visits,rating,zip,code\n"
        "a,true,3,4.5,02134,1\n"
        "b,FALSE,3,4,90210,2\n"
        "c,true,12,,10001,n/a\n"
    )
    done = engage(project, "import", "customers", "customers.csv")
    assert done.returncode == 0, done.stderr
    attrs = {cid: c["attributes"] for cid, c in rows(engine, Customer).items()}
    assert attrs == {
        "a": {"vip": True, "visits": 3, "rating": 4.5, "zip": "02134", "code": "1"},
        "b": {"vip": False, "visits": 3, "rating": 4, "zip": "90210", "code": "2"},
        "c": {"vip": True, "visits": 12, "zip": "10001", "code": "n/a"},
    }  # one type per column: a column of zip codes or codes with an "n/a" stays text
    config = Config()
    docs_example = Audience.model_validate({"where": {"vip": True, "visits": 3}})
    assert count_audience(engine, docs_example, config, datetime.now(UTC)) == 1


def _campaign_project(project: Path) -> None:
    shutil.copytree(ROOT / "templates", project / "templates")
    (project / "campaigns").mkdir()
    (project / "config.yaml").write_text(
        (project / "config.yaml").read_text()
        + "shop:\n  name: Test Shop\n  postal_address: 1 Test Street, Springfield\n"
    )
    (project / "campaigns" / "vip.yaml").write_text(
        "name: vip\n"
        "schedule: {cron: '0 10 * * *', timezone: UTC}\n"
        "audience:\n"
        "  tiers: [gold, platnum]\n"
        "  where:\n"
        "    vipp: true\n"
        "    visits: '3'\n"
        "channels: [email]\n"
        "template: winback\n"
    )


def test_validate_warns_of_where_keys_and_tiers_nobody_has(project: Path) -> None:
    _campaign_project(project)
    quiet = engage(project, "validate")  # no customers yet: nothing to compare with
    assert quiet.returncode == 0 and "warning" not in quiet.stdout, quiet.stdout
    (project / "customers.csv").write_text(
        "id,tier,vip,visits\nx,gold,true,3\ny,platinum,false,5\n"
    )
    assert engage(project, "import", "customers", "customers.csv").returncode == 0
    done = engage(project, "validate")
    assert done.returncode == 0, done.stdout  # warnings only
    shown = [line for line in done.stdout.splitlines() if ": warning: " in line]
    assert shown == [
        "campaigns/vip.yaml:4:17: warning: audience.tiers[1]: no customer has the tier"
        " 'platnum': did you mean 'platinum'?",
        "campaigns/vip.yaml:6:5: warning: audience.where.vipp: no customer has the attribute"
        " 'vipp', so this matches nobody: did you mean 'vip'?",
        "campaigns/vip.yaml:7:13: warning: audience.where.visits: no customer matches visits:"
        " '3' (text in the campaign; the customers' visits is a number: write it without or"
        " with quotes to match)",
    ]
    assert done.stdout.splitlines()[-1] == "1 campaign OK, 3 warnings"


def test_interactions_dated_in_the_future_are_counted(project: Path, engine: Engine) -> None:
    (project / "customers.csv").write_text("id\nk1\n")
    engage(project, "import", "customers", "customers.csv")
    (project / "interactions.csv").write_text(
        "customer_id,kind,occurred_at,external_id\n"
        "k1,visit,2026-01-01T10:00:00Z,a\n"
        "k1,order,2099-12-31T23:00:00Z,b\n"
    )
    done = engage(project, "import", "interactions", "interactions.csv")
    assert done.returncode == 0, done.stderr
    (warning,) = problems(done)
    assert warning.startswith(
        "interactions.csv:3: warning: occurred_at: 2099-12-31T23:00:00Z is in the future"
        " (the import ran at "
    )
    assert "2 imported" in done.stdout and "warnings: 1 dated in the future" in done.stdout
    assert set(rows(engine, Interaction)) == {"a", "b"}  # kept: the shop may know better


def test_nps_answers_carry_a_score_from_0_to_10(project: Path, engine: Engine) -> None:
    (project / "customers.csv").write_text("id\nn1\n")
    engage(project, "import", "customers", "customers.csv")
    (project / "answers.jsonl").write_text(
        "\n".join(
            json.dumps(o)
            for o in (
                {"customer_id": "n1", "kind": "nps", "occurred_at": "2026-02-01", "score": 9,
                 "external_id": "s1"},
                {"customer_id": "n1", "kind": "nps", "occurred_at": "2026-02-02", "score": "10",
                 "external_id": "s2"},
                {"customer_id": "n1", "kind": "nps", "occurred_at": "2026-02-03", "score": 11},
                {"customer_id": "n1", "kind": "nps", "occurred_at": "2026-02-04"},
                {"customer_id": "n1", "kind": "nps", "occurred_at": "2026-02-05", "score": 7.5},
            )
        )  # fmt: skip
        + "\n"
    )
    done = engage(project, "import", "interactions", "answers.jsonl")
    assert problems(done) == [
        "answers.jsonl:3: score: must be a whole number from 0 to 10, got 11",
        "answers.jsonl:4: score: required for nps answers (a whole number from 0 to 10)",
        "answers.jsonl:5: score: expected a whole number, got 7.5",
    ]
    assert {k: r["score"] for k, r in rows(engine, Interaction).items()} == {"s1": 9, "s2": 10}


def test_ctrl_c_reports_what_was_committed_and_rerunning_is_safe(
    project: Path, engine: Engine
) -> None:
    n = 300_000  # many batches after the first commit: the signal lands mid-import
    (project / "config.yaml").write_text(
        (project / "config.yaml").read_text() + "import_batch_size: 10000\n"
    )
    (project / "customers.csv").write_text("id\n" + "".join(f"c{i}\n" for i in range(100)))
    assert engage(project, "import", "customers", "customers.csv").returncode == 0
    with (project / "big.csv").open("w") as fh:
        fh.write("customer_id,kind,occurred_at,external_id\n")
        for i in range(n):
            fh.write(f"c{i % 100},visit,2026-01-01T00:00:{i % 60:02d}Z,e{i}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    proc = subprocess.Popen(
        [ENGAGE, "--config", str(project / "config.yaml"), "import", "interactions", "big.csv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=project,
        env=env,
        # A test run started in the background (`.ci/run &`) ignores SIGINT, and
        # so would engage (Python keeps an inherited SIG_IGN): restore it, as a
        # terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    committed = 0
    while committed == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        with engine.connect() as conn:
            committed = conn.execute(select(func.count()).select_from(Interaction)).scalar_one()
    if proc.poll() is not None:
        pytest.skip("the import finished before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    stopped = [line for line in err.splitlines() if "interrupted" in line]
    assert len(stopped) == 1, err
    from engage.db import facts  # (the code before this work had neither)
    from engage.db.load import missing_indexes
    from engage.db.models import CustomerFacts
    from engage.ingest.loading import FIRST_LOAD_TABLES

    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(Interaction)).scalar_one()
        assert facts.state(conn).valid  # the first load finished its indexes and facts
        assert not missing_indexes(conn, list(FIRST_LOAD_TABLES.values()))
    assert 0 < count < n
    assert f"{count:,} imported ({count:,} new" in stopped[0]
    assert "Running the same import again is safe" in stopped[0]

    again = engage(project, "import", "interactions", "big.csv")
    assert again.returncode == 0, again.stderr
    assert f"{n - count:,} new, 0 updated), {count:,} unchanged" in again.stdout
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Interaction)).scalar_one() == n
        orders = conn.execute(select(func.sum(CustomerFacts.__table__.c.orders))).scalar_one()
    assert orders == 0
