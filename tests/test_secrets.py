"""Missing secrets fail before planning; previews need none (issue 13, item 6).

Without ``ENGAGE_SECRET_KEY``, ``engage send`` used to plan every message,
mark most of them ``render_error`` and exit 0, and ``dry-run`` reported every
customer as ``render_error``. Now ``send`` and ``run`` refuse in one line
before anything is planned, and ``dry-run``/``preview`` render with a visible
placeholder unsubscribe link. Driven through the installed ``engage``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engage.config import load_config
from engage.db import make_engine, upgrade
from engage.db.models import CampaignRun, Message
from engage.ingest import import_file

from .helpers import SECRET
from .installed import clean_env, engage, one_line_error
from .test_cli import AT, CUSTOMERS, INTERACTIONS, POINTS

PLACEHOLDER = "/u/UNSIGNED-PREVIEW-set-ENGAGE_SECRET_KEY"


@pytest.fixture
def shop(tmp_path: Path, db_url: str) -> tuple[Path, str]:
    engage("init", "proj", cwd=tmp_path)
    proj = tmp_path / "proj"
    engine = make_engine(db_url)
    upgrade(engine)
    config = load_config(proj / "config.yaml", environ={})
    for kind, text in (("customers", CUSTOMERS), ("interactions", INTERACTIONS), ("points", POINTS)):
        (proj / f"{kind}.csv").write_text(text)
        assert import_file(engine, config, kind, str(proj / f"{kind}.csv")).rejected == 0
    engine.dispose()
    return proj, db_url


def _written(db_url: str) -> tuple[int, int]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            messages = conn.execute(select(func.count()).select_from(Message)).scalar_one()
            runs = conn.execute(select(func.count()).select_from(CampaignRun)).scalar_one()
            return int(messages), int(runs)
    finally:
        engine.dispose()


CASES = [
    ({}, ["ENGAGE_SECRET_KEY"]),
    ({"ENGAGE_SECRET_KEY": "too-short"}, ["at least 16 characters"]),
    (
        {"ENGAGE_CHANNELS__EMAIL": "sendgrid", "ENGAGE_CHANNELS__SMS": "twilio"},
        ["ENGAGE_SECRET_KEY", "SENDGRID_API_KEY", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"],
    ),
    ({"ENGAGE_SECRET_KEY": SECRET, "ENGAGE_CHANNELS__EMAIL": "sendgrid"}, ["SENDGRID_API_KEY"]),
]


def test_send_and_run_refuse_before_planning_without_their_secrets(
    shop: tuple[Path, str],
) -> None:
    proj, db_url = shop
    for i, (env, names) in enumerate(CASES):
        full = clean_env(ENGAGE_DATABASE_URL=db_url, **env)
        commands = [["send", "winback-30d", "--at", AT, "--yes"]]
        if i == 0:
            commands += [["run", "--once"], ["run"]]
        for args in commands:
            proc = engage(*args, cwd=proj, env=full, code=1, timeout=60)
            line = one_line_error(proc)
            assert all(name in line for name in names), line
            assert "nothing was planned or sent" in line
            assert _written(db_url) == (0, 0), args  # no message, no campaign_run row


def test_dry_run_and_preview_work_without_the_secret(shop: tuple[Path, str]) -> None:
    proj, db_url = shop
    env = clean_env(ENGAGE_DATABASE_URL=db_url)
    dry = engage("dry-run", "winback-30d", "--at", AT, "--json", cwd=proj, env=env)
    data = json.loads(dry.stdout)
    assert data["counts"]["send"] == 2 and "render_error" not in data["counts"]
    note = [line for line in dry.stderr.splitlines() if line.strip()]
    assert len(note) == 1 and note[0].startswith("note: ENGAGE_SECRET_KEY is not set")
    assert PLACEHOLDER in note[0]

    proc = engage("preview", "winback-30d", "--customer", "c1", "--at", AT, cwd=proj, env=env)
    assert f"List-Unsubscribe: <https://engage.example.com{PLACEHOLDER}>" in proc.stdout
    assert f'href="https://engage.example.com{PLACEHOLDER}"' in proc.stdout
    assert proc.stderr.count("note: ") == 1

    # with the key: signed links, no note, and never the placeholder
    signed = clean_env(ENGAGE_DATABASE_URL=db_url, ENGAGE_SECRET_KEY=SECRET)
    proc = engage("preview", "winback-30d", "--customer", "c1", "--at", AT, cwd=proj, env=signed)
    assert PLACEHOLDER not in proc.stdout and "note:" not in proc.stderr
    assert "List-Unsubscribe: <https://engage.example.com/u/" in proc.stdout
