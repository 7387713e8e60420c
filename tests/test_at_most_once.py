"""A process killed between 'sending' and the provider's answer leaves `unknown`, never a second send."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from engage.db import make_engine, upgrade
from engage.db.models import Message
from engage.delivery.dispatch import expire_leases
from engage.testing import FakeSendGrid
from engage.timeutil import utcnow

from .helpers import SECRET, add_customer, add_interaction, midday_zone
from .installed import ENGAGE as INSTALLED_ENGAGE
from .test_cli import run


def test_kill_during_provider_call_never_resends(tmp_path: Path, db_url: str) -> None:
    run(["init", "proj"], tmp_path)
    proj = tmp_path / "proj"
    engine = make_engine(db_url)
    try:
        _scenario(engine, proj, db_url)
    finally:
        engine.dispose()


def _scenario(engine: Engine, proj: Path, db_url: str) -> None:
    upgrade(engine)
    at = utcnow().replace(second=0, microsecond=0)
    AT = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    add_customer(engine, "ann", created_at=at - timedelta(days=400), timezone=midday_zone(at))
    add_interaction(engine, "ann", at - timedelta(days=45), "order", "10.00")  # quiet, in audience
    with FakeSendGrid(api_key="SG.k") as fake:
        fake.script("hang", seconds=30)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")},
            "ENGAGE_DATABASE_URL": db_url,
            "ENGAGE_SECRET_KEY": SECRET,
            "SENDGRID_API_KEY": "SG.k",
            "ENGAGE_CHANNELS__EMAIL": "sendgrid",
            "ENGAGE_CHANNELS__SENDGRID__API_HOST": fake.url,
            "ENGAGE_CHANNELS__SENDGRID__TIMEOUT": "60",
            "ENGAGE_DISPATCH__LEASE": "1m",
        }
        proc = subprocess.Popen(
            [INSTALLED_ENGAGE, "send", "winback-30d", "--yes", "--at", AT],
            cwd=proj,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while not fake.requests and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert fake.requests, proc.communicate(timeout=5) if proc.poll() is not None else ""
        finally:
            proc.send_signal(signal.SIGKILL)  # dies while the provider holds the request
            proc.communicate(timeout=10)
        with engine.connect() as conn:
            row = conn.execute(select(Message).where(Message.status != "held_out")).one()
        assert row.status == "sending"
        # before the lease runs out nothing touches it; after, it is unknown
        assert expire_leases(engine) == (0, 0)
        assert expire_leases(engine, utcnow() + timedelta(minutes=2)) == (0, 1)
        # a new send of the same occurrence plans nothing and sends nothing
        out = run(["send", "winback-30d", "--yes", "--at", AT], proj, {k: v for k, v in env.items() if k.startswith(("ENGAGE_", "SENDGRID"))})
        assert "already planned" in out.stdout
        with engine.connect() as conn:
            row = conn.execute(select(Message).where(Message.id == row.id)).one()
        assert row.status == "unknown" and "lease expired" in row.error
        assert len(fake.requests) == 1
