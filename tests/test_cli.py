"""Acceptance tests: the real `engage` command in a temp project, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from .helpers import SECRET
from .installed import ENGAGE as INSTALLED_ENGAGE

ENGAGE = [INSTALLED_ENGAGE]


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    full_env.update(env or {})
    proc = subprocess.run(
        ENGAGE + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == code, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr
    return proc


def test_demo_in_an_empty_folder(tmp_path: Path) -> None:
    proc = run(["demo", "shop", "--customers", "300"], tmp_path)
    assert "winback-30d" in proc.stdout and "files written" in proc.stdout
    outbox = tmp_path / "shop" / "outbox"
    emails = sorted(outbox.glob("*.eml"))
    assert emails, proc.stdout
    for path in emails:
        msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        assert msg["From"] and msg["To"] and msg["Subject"] and msg["Date"] and msg["Message-ID"]
        # the demo's links point at a local `engage serve` (test_web_serve.py follows one)
        assert msg["List-Unsubscribe"].startswith("<http://127.0.0.1:8080/u/")
        assert msg["List-Unsubscribe"].endswith(">")
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in msg.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        assert "1 Roastery Lane" in msg.get_body(("html",)).get_content()
    for path in outbox.glob("*.txt"):
        assert "STOP" in path.read_text()
    # running it again recreates the demo folder cleanly
    run(["demo", "shop", "--customers", "50"], tmp_path)
    # a non-demo, non-empty folder is refused with a message, not a traceback
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    proc = run(["demo", "mine"], tmp_path, code=1)
    assert "not empty" in proc.stderr


CUSTOMERS = """id,email,phone,first_name,last_name,timezone,locale,tier,email_opt_in,sms_opt_in,created_at,country
c1,ann@example.com,+12025550101,Ann,Lee,America/New_York,en_US,gold,true,true,2025-01-01T00:00:00Z,US
c2,bob@example.com,,Bob,Ray,Asia/Tokyo,ja_JP,silver,true,false,2025-02-01T00:00:00Z,JP
c3,,+12025550103,Cy,Oak,America/Chicago,en_US,bronze,false,true,2025-03-01T00:00:00Z,US
c4,dee@example.com,,Dee,Fox,Europe/Berlin,de_DE,gold,false,false,2025-04-01T00:00:00Z,DE
c5,eve@example.com,,Eve,Kim,America/New_York,en_US,silver,true,false,2026-06-01T00:00:00Z,US
"""
INTERACTIONS = """customer_id,kind,occurred_at,amount,external_id
c1,order,2026-05-01T15:00:00Z,42.50,o1
c2,order,2026-05-02T15:00:00Z,10.00,o2
c3,order,2026-05-03T15:00:00Z,99.99,o3
c4,order,2026-05-04T15:00:00Z,12.00,o4
c5,order,2026-06-10T15:00:00Z,20.00,o5
"""
POINTS = """customer_id,points,earned_at,expires_at,external_id
c1,300,2025-07-01T00:00:00Z,2026-06-20T00:00:00Z,l1
c1,-100,2026-01-01T00:00:00Z,,r1
c2,50,2025-07-01T00:00:00Z,2027-01-01T00:00:00Z,l2
"""


@pytest.fixture
def project(tmp_path: Path, db_url: str) -> tuple[Path, dict[str, str]]:
    run(["init", "proj"], tmp_path)
    proj = tmp_path / "proj"
    env = {"ENGAGE_DATABASE_URL": db_url, "ENGAGE_SECRET_KEY": SECRET}
    run(["db", "upgrade"], proj, env)
    for kind, text in (
        ("customers", CUSTOMERS),
        ("interactions", INTERACTIONS),
        ("points", POINTS),
    ):
        (proj / f"{kind}.csv").write_text(text)
        proc = run(["import", kind, f"{kind}.csv"], proj, env)
        assert "rejected" not in proc.stdout or " 0 rejected" in proc.stdout
    return proj, env


AT = "2026-06-15T14:00:00Z"  # 10:00 in New York


def test_dry_run_json_contract(project: tuple[Path, dict[str, str]]) -> None:
    proj, env = project
    data = json.loads(run(["dry-run", "winback-30d", "--at", AT, "--json"], proj, env).stdout)
    assert data["campaign"] == "winback-30d" and data["as_of"] == "2026-06-15T14:00:00Z"
    # quiet for 30 days with an order: c1..c4 (c5 ordered 5 days ago)
    by = {d["customer_id"]: d for d in data["decisions"]}
    assert set(by) == {"c1", "c2", "c3", "c4"}
    assert data["counts"]["matched"] == 4
    for d in data["decisions"]:
        assert set(d) == {"customer_id", "decision", "reason", "channel", "send_at"}
    assert by["c4"]["decision"] == "skip" and by["c4"]["reason"] == "no_consent"
    assert by["c3"]["channel"] == "sms"  # no email: the first reachable channel wins
    assert by["c3"]["send_at"] == "2026-06-15T14:00:00Z"  # 09:00 Chicago: inside 09-20
    sends = [d for d in data["decisions"] if d["decision"] == "send"]
    assert all(d["reason"] is None for d in sends)
    # the same audience in a table, and the calendar
    assert "matched: 4" in run(["dry-run", "winback-30d", "--at", AT], proj, env).stdout
    cal = json.loads(run(["calendar", "--at", AT, "--days", "3", "--json"], proj, env).stdout)
    assert [e["at"] for e in cal] == sorted(e["at"] for e in cal)
    assert {e["campaign"] for e in cal} >= {"winback-30d", "points-expiring"}
    for e in cal:
        assert set(e) == {"campaign", "at", "local", "estimated_audience"}
    wb = [e for e in cal if e["campaign"] == "winback-30d"]
    # an occurrence at exactly --at is upcoming (it has not been planned yet)
    assert wb[0]["at"] == "2026-06-15T14:00:00Z" and wb[0]["local"] == "2026-06-15T10:00:00-04:00"
    assert wb[1]["at"] == "2026-06-16T14:00:00Z"
    pe = [e for e in cal if e["campaign"] == "points-expiring"]
    assert pe[0]["estimated_audience"] == 1  # c1: 200 points expiring on 2026-06-20


def test_dry_run_names_the_template_line_of_a_render_error(
    project: tuple[Path, dict[str, str]],
) -> None:
    proj, env = project
    # "[/b]" would be Rich markup (and crash the table) if printed as such
    (proj / "templates" / "winback" / "subject.j2").write_text("{{ customer['[/b]nick'] }}\n")
    data = json.loads(run(["dry-run", "winback-30d", "--at", AT, "--json"], proj, env).stdout)
    by = {d["customer_id"]: d for d in data["decisions"]}
    broken = [d for d in data["decisions"] if d["reason"] == "render_error"]
    assert broken and data["counts"]["render_error"] == len(broken)
    for d in broken:
        assert d["channel"] == "email" and d["error"].startswith(
            "templates/winback/subject.j2:1: undefined:"
        )
        assert "[/b]nick" in d["error"]
    assert by["c3"]["channel"] == "sms" and "error" not in by["c3"]  # SMS: no subject
    wide = {**env, "COLUMNS": "300"}  # one table row per decision
    table = run(["dry-run", "winback-30d", "--at", AT], proj, wide).stdout
    assert "render_error: templates/winback/subject.j2:1: undefined:" in table
    assert "[/b]nick" in table


def test_send_twice_preview_outbox_customer(project: tuple[Path, dict[str, str]]) -> None:
    proj, env = project
    first = run(["send", "winback-30d", "--at", AT, "--yes"], proj, env)
    assert "planned 3 new messages" in first.stdout or "planned 2 new messages" in first.stdout
    second = run(["send", "winback-30d", "--at", AT, "--yes"], proj, env)
    assert "already planned" in second.stdout and "planned 0 new messages" in second.stdout
    box = json.loads(run(["outbox", "--json"], proj, env).stdout)
    ids = [m["customer_id"] for m in box["messages"] if m["status"] != "held_out"]
    assert len(ids) == len(set(ids))  # one message per customer, never two
    written = list((proj / "outbox").glob("*"))
    assert len(written) == box["counts"].get("sent", 0)
    # without --yes and without a terminal, send refuses
    proc = run(["send", "winback-30d", "--at", AT], proj, env, code=1)
    assert "--yes" in proc.stderr
    # preview renders the exact message
    pv = run(["preview", "winback-30d", "--customer", "c1", "--at", AT], proj, env).stdout
    assert "Subject:" in pv and "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in pv
    sms = run(
        ["preview", "winback-30d", "--customer", "c3", "--channel", "sms", "--at", AT], proj, env
    ).stdout
    assert "segment" in sms and "STOP" in sms
    # the customer timeline
    t = json.loads(run(["customer", "c1", "--at", AT, "--json"], proj, env).stdout)
    assert t["points"]["balance"] == 200 and t["days_quiet"] == 44
    assert t["messages"] and t["messages"][0]["campaign"] == "winback-30d"
    assert "200" in run(["customer", "c1", "--at", AT], proj, env).stdout


def test_suppress_and_errors(project: tuple[Path, dict[str, str]]) -> None:
    proj, env = project
    run(["suppress", "add", "email", "ANN@example.com", "--reason", "unsubscribe"], proj, env)
    listed = json.loads(run(["suppress", "list", "--json"], proj, env).stdout)
    assert [(s["channel"], s["address"], s["reason"]) for s in listed] == [
        ("email", "ann@example.com", "unsubscribe")
    ]
    data = json.loads(run(["dry-run", "winback-30d", "--at", AT, "--json"], proj, env).stdout)
    c1 = next(d for d in data["decisions"] if d["customer_id"] == "c1")
    assert c1["channel"] == "sms"  # email suppressed: falls back to SMS
    run(["suppress", "remove", "email", "ann@example.com"], proj, env)
    assert (
        "not suppressed"
        in run(["suppress", "remove", "email", "ann@example.com"], proj, env, code=1).stderr
    )
    assert (
        "did you mean 'winback-30d'"
        in run(["dry-run", "winback30", "--json"], proj, env, code=1).stderr
    )
    assert "--at" in run(["dry-run", "winback-30d", "--at", "yesterday"], proj, env, code=1).stderr
    assert "no customer" in run(["customer", "nobody"], proj, env, code=1).stderr
    run(["frobnicate"], proj, env, code=2)
    run(["dry-run"], proj, env, code=2)
    assert "unknown status" in run(["outbox", "--status", "nope"], proj, env, code=1).stderr
    assert "not found" in run(["outbox", "requeue", "424242"], proj, env, code=1).stdout


def test_every_command_has_help_and_a_docs_section() -> None:
    import typer.main

    from engage.cli import app

    root = typer.main.get_command(app)
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()

    def walk(cmd, prefix):
        for name, sub in getattr(cmd, "commands", {}).items():
            full = f"{prefix} {name}"
            yield full, sub
            yield from walk(sub, full)

    commands = list(walk(root, "engage"))
    assert len(commands) >= 15
    for full, cmd in commands:
        assert (cmd.help or "").strip(), f"{full} has no help text"
        assert f"`{full}" in docs, f"docs/cli.md has no section for {full}"
