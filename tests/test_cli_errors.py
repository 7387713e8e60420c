"""Every command fails in one line, never a traceback (issue 13, item 8; docs/cli.md).

Unreachable or missing databases, a bad SQLite path, a database without
engage's tables, a read-only folder: each case runs every command that needs
the database through the installed ``engage`` and expects exit status 1 and
a single ``error: ...`` line that names the problem. Also: the Twilio SDK's
per-request INFO logging stays out of ``engage run``'s log unless asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import insert

from engage.db import make_engine, upgrade
from engage.db.models import Customer
from engage.testing import FakeTwilio

from .conftest import PG_URL
from .helpers import ROOT, SECRET
from .installed import clean_env, engage, one_line_error

DB_COMMANDS = [
    ["db", "upgrade"],
    ["import", "customers", "customers.csv"],
    ["dry-run", "winback-30d"],
    ["send", "winback-30d", "--yes"],
    ["preview", "winback-30d", "--customer", "c1"],
    ["calendar"],
    ["customer", "c1"],
    ["outbox"],
    ["outbox", "requeue", "1"],
    ["suppress", "add", "email", "a@example.com"],
    ["suppress", "remove", "email", "a@example.com"],
    ["suppress", "list"],
    ["run", "--once"],
    ["run"],
    ["status"],
]
# Every command goes through the same translation at the entry point; the cases
# other than the bad SQLite path try these, where the error arises differently:
# at connect, in the first query, in a write, in the daemon's start-up checks.
SOME_COMMANDS = [
    ["db", "upgrade"],
    ["send", "winback-30d", "--yes"],
    ["calendar"],
    ["run", "--once"],
    ["run"],
    ["status"],
]


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    engage("init", "proj", cwd=tmp_path)
    proj = tmp_path / "proj"
    (proj / "customers.csv").write_text("id,email\nc1,a@example.com\n")
    return proj


def _all_fail_in_one_line(
    proj: Path, env: dict[str, str], expected: str, commands: list[list[str]] = SOME_COMMANDS
) -> None:
    def attempt(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
        return args, engage(*args, cwd=proj, env=env, code=None, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        for args, proc in pool.map(attempt, commands):
            assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
            line = one_line_error(proc)
            if args[0] == "import":  # the importer words it itself (engage/ingest)
                assert "customers.csv: database error" in line, line
            else:
                assert expected in line, (args, line)


def test_an_unreachable_database(proj: Path) -> None:
    url = "postgresql://engage:hunter2pass@127.0.0.1:1/engage"  # nothing listens on port 1
    env = clean_env(ENGAGE_DATABASE_URL=url, ENGAGE_SECRET_KEY=SECRET)
    _all_fail_in_one_line(
        proj, env, "cannot connect to the database postgresql://engage:***@127.0.0.1:1/engage"
    )


@pytest.mark.postgres
def test_a_postgresql_database_that_does_not_exist(proj: Path) -> None:
    if not PG_URL:
        pytest.skip("needs ENGAGE_TEST_POSTGRES_URL")
    url = PG_URL.rsplit("/", 1)[0] + f"/engage_missing_{uuid.uuid4().hex[:8]}"
    env = clean_env(ENGAGE_DATABASE_URL=url, ENGAGE_SECRET_KEY=SECRET)
    _all_fail_in_one_line(proj, env, "does not exist")


def test_a_sqlite_path_in_a_folder_that_does_not_exist(proj: Path) -> None:
    path = f"/nonexistent-{uuid.uuid4().hex[:8]}/engage.db"
    env = clean_env(ENGAGE_DATABASE_URL=f"sqlite:///{path}", ENGAGE_SECRET_KEY=SECRET)
    _all_fail_in_one_line(proj, env, f"cannot open the SQLite database {path}", DB_COMMANDS)


def test_a_database_without_engage_tables(proj: Path) -> None:
    env = clean_env(ENGAGE_SECRET_KEY=SECRET)  # engage.db beside config.yaml, never upgraded
    commands = [c for c in SOME_COMMANDS if c != ["db", "upgrade"]]
    commands += [["dry-run", "winback-30d"], ["outbox"], ["suppress", "list"]]
    _all_fail_in_one_line(proj, env, "run `engage db upgrade`", commands)


def test_a_database_at_an_older_schema(proj: Path) -> None:
    engine = make_engine(f"sqlite:///{proj / 'engage.db'}")
    upgrade(engine, "0002")  # the last revision before campaign_run.error
    engine.dispose()
    env = clean_env(ENGAGE_SECRET_KEY=SECRET)
    _all_fail_in_one_line(proj, env, "engage db upgrade", [["status"], ["run", "--once"], ["run"]])
    engage("db", "upgrade", cwd=proj, env=env)
    engage("status", cwd=proj, env=env)


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` read-only even for root (``chattr +i``), else ``chmod 555``."""
    undo: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)]).returncode == 0:
            undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
    try:
        probe = folder / ".probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("cannot make a folder read-only here")
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        folder.chmod(0o755)


def test_a_read_only_folder(proj: Path) -> None:
    env = clean_env(ENGAGE_SECRET_KEY=SECRET)
    with _read_only(proj):
        _all_fail_in_one_line(proj, env, f"cannot open the SQLite database {proj / 'engage.db'}")
        for args, expected in (
            (["init", "sub"], "sub"),
            (["demo", "sub", "--customers", "5"], "sub"),
            (["import", "customers", "customers.csv", "--rejects", "rejected.csv"], "rejected.csv"),
        ):
            line = one_line_error(engage(*args, cwd=proj, env=env, code=1))
            assert expected in line, (args, line)
    # and a database that exists, in a folder that became read-only
    engage("db", "upgrade", cwd=proj, env=env)
    with _read_only(proj):
        for args in (["send", "winback-30d", "--yes"], ["suppress", "list"], ["status"]):
            line = one_line_error(engage(*args, cwd=proj, env=env, code=1))
            assert "SQLite database" in line, (args, line)


def test_a_number_the_database_cannot_hold_is_a_located_one_line_error(proj: Path) -> None:
    """It used to reach SQL and fail there (an OverflowError); now the campaign
    does not load, and the line says where."""
    env = clean_env(ENGAGE_SECRET_KEY=SECRET)
    engage("db", "upgrade", cwd=proj, env=env)
    (proj / "campaigns" / "huge.yaml").write_text(
        'schedule:\n  cron: "0 10 * * *"\naudience:\n  min_points_balance: 99999999999999999999\n'
        "channels: [email]\ntemplate: winback\n"
    )
    line = one_line_error(engage("dry-run", "huge", cwd=proj, env=env, code=1))
    assert line.startswith("error: campaigns/huge.yaml:4:23: audience.min_points_balance: "), line
    assert "less than or equal to 2147483647" in line


def _local_noon_zone(now: datetime) -> str:
    """An Etc/GMT zone where it is around noon now (inside any SMS window)."""
    offset = 12 - now.hour
    offset = offset - 24 if offset > 14 else offset + 24 if offset < -12 else offset
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}" if offset < 0 else "")


def test_twilio_sdk_request_logging_is_off_unless_asked(tmp_path: Path) -> None:
    sid, token = "AC" + "5" * 32, "tw-token-0123456789"
    proj = tmp_path / "proj"
    (proj / "campaigns").mkdir(parents=True)
    shutil.copytree(ROOT / "templates", proj / "templates")
    engine = make_engine(f"sqlite:///{proj / 'engage.db'}")
    upgrade(engine)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(Customer),
            [
                {
                    "id": f"c{i}",
                    "phone": f"+1202555010{i}",
                    "timezone": _local_noon_zone(now),
                    "email_opt_in": False,
                    "sms_opt_in": True,
                    "attributes": {},
                    "created_at": now - timedelta(days=90),
                }
                for i in range(3)
            ],
        )
    engine.dispose()
    with FakeTwilio(account_sid=sid, auth_token=token) as fake:
        settings = {
            "public_url": "https://engage.shop.test",
            "shop": {"name": "Test Shop", "postal_address": "1 Test Street"},
            "channels": {
                "sms": "twilio",
                "twilio": {"api_base": fake.url, "from_number": "+15557654321"},
            },
        }
        (proj / "config.yaml").write_text(yaml.safe_dump(settings))
        env = clean_env(ENGAGE_SECRET_KEY=SECRET, TWILIO_ACCOUNT_SID=sid, TWILIO_AUTH_TOKEN=token)
        for name in ("first", "second"):
            (proj / "campaigns" / f"{name}.yaml").write_text(
                f'name: {name}\nschedule:\n  cron: "{now.minute} {now.hour} * * *"\n'
                "  timezone: UTC\naudience: {}\nchannels: [sms]\ntemplate: winback\n"
                "exempt_from_frequency_cap: true\n"
            )
            args = ["run", "--once", "--log-format", "json"]
            if name == "second":
                args += ["--log-level", "debug"]
            proc = engage(*args, cwd=proj, env=env)
            events = [json.loads(line) for line in proc.stderr.splitlines() if line]
            twilio = [e for e in events if e.get("logger", "").startswith("twilio")]
            sent = [e for e in events if e["event"] == "message_sent"]
            assert len(sent) == 3, proc.stderr[-3000:]
            if name == "first":
                assert twilio == [], twilio[:3]
            else:  # asked for: --log-level debug
                assert twilio and all(e["level"] == "INFO" for e in twilio)
                assert token not in proc.stderr and SECRET not in proc.stderr
        assert len(fake.requests) == 6
