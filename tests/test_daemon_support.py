"""A temp project driven by real `engage run` processes against a real FakeSendGrid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, func, insert, select

from engage.db import make_engine, upgrade
from engage.db.models import CampaignRun, Customer, Message
from engage.testing import FakeSendGrid

from .helpers import ROOT, SECRET
from .installed import ENGAGE as INSTALLED_ENGAGE

ENGAGE = [INSTALLED_ENGAGE]
API_KEY = "SG.daemon-test-key"


def campaign_yaml(name: str, cron: str, *, enabled: bool = True) -> str:
    return (
        f"name: {name}\nenabled: {str(enabled).lower()}\n"
        f'schedule:\n  cron: "{cron}"\n  timezone: UTC\n'
        "audience: {}\nchannels: [email]\ntemplate: winback\nreentry: once\n"
        "exempt_from_frequency_cap: true\n"
    )


def cron_at(when: datetime, *, daily: bool = True) -> str:
    """A crontab firing at ``when``'s minute (UTC), daily or hourly."""
    when = when.astimezone(UTC)
    return f"{when.minute} {when.hour if daily else '*'} * * *"


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def log_text(self) -> str:
        return self.log_path.read_text()


@dataclass
class Project:
    dir: Path
    db_url: str
    engine: Engine
    fake: FakeSendGrid
    settings: dict[str, Any]
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGAGE_", "SENDGRID"))}
        env.update(
            ENGAGE_DATABASE_URL=self.db_url,
            ENGAGE_SECRET_KEY=SECRET,
            SENDGRID_API_KEY=API_KEY,
        )
        return env

    def write_config(self, **dispatch: Any) -> None:
        self.settings["dispatch"].update(dispatch)
        (self.dir / "config.yaml").write_text(yaml.safe_dump(self.settings))

    def write_campaign(self, name: str, body: str) -> Path:
        path = self.dir / "campaigns" / f"{name}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(body)
        tmp.replace(path)  # atomic, like an editor's save
        return path

    def add_customers(self, n: int) -> None:
        created = datetime.now(UTC) - timedelta(days=400)
        rows = [
            {
                "id": f"c{i:05d}",
                "email": f"c{i:05d}@example.com",
                "timezone": "UTC",
                "email_opt_in": True,
                "sms_opt_in": False,
                "attributes": {},
                "created_at": created,
            }
            for i in range(n)
        ]
        with self.engine.begin() as conn:
            for start in range(0, n, 1000):
                conn.execute(insert(Customer), rows[start : start + 1000])

    # -- processes -----------------------------------------------------------------------
    def run(
        self, *args: str, code: int = 0, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ENGAGE + list(args),
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == code, (
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
        return proc

    def start(self, *extra: str) -> Daemon:
        log_path = self.dir / f"daemon-{len(self.daemons)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ENGAGE + ["run", "--log-format", "json", *extra],
                cwd=self.dir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        daemon = Daemon(proc, log_path)
        self.daemons.append(daemon)
        return daemon

    def stop(self, daemon: Daemon, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        # Before its handlers are installed a signal just kills the interpreter.
        wait_for("start-up", lambda: daemon.named("daemon_started"), daemons=[daemon])
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(sig)
        return daemon.proc.wait(timeout=timeout)

    def status(self) -> dict[str, Any]:
        return json.loads(self.run("status", "--json").stdout)

    # -- the database and the fake -------------------------------------------------------
    def counts(self) -> Counter[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Message.status, func.count()).group_by(Message.status))
            return Counter({s: int(n) for s, n in rows})

    def runs(self) -> list[tuple[datetime, str]]:
        with self.engine.connect() as conn:
            return [
                (r.scheduled_at, r.state)
                for r in conn.execute(
                    select(CampaignRun.scheduled_at, CampaignRun.state).order_by(
                        CampaignRun.scheduled_at
                    )
                )
            ]

    def requests_per_message(self) -> Counter[str]:
        """Complete requests per message; a request cut off by ``kill -9`` before its
        body arrived (the fake records no body) never reached the provider as a send."""
        return Counter(
            r.body["custom_args"]["engage_message_id"]
            for r in self.fake.requests
            if isinstance(r.body, dict)
        )


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 30, daemons: list[Daemon] | None = None
) -> Any:
    """Poll ``check`` until it is truthy; fail with the daemons' logs otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for d in daemons or []:
            assert d.proc.poll() is None, (
                f"daemon exited {d.proc.returncode}:\n{d.log_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            logs = "\n".join(d.log_text()[-3000:] for d in daemons or [])
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.05)


@contextmanager
def project(tmp_path: Path, db_url: str, **dispatch: Any) -> Iterator[Project]:
    """A project folder with the example templates, a migrated database and a fake SendGrid."""
    proj = tmp_path / "proj"
    (proj / "campaigns").mkdir(parents=True)
    shutil.copytree(ROOT / "templates", proj / "templates")
    engine = make_engine(db_url)
    upgrade(engine)
    with FakeSendGrid(api_key=API_KEY) as fake:
        settings: dict[str, Any] = {
            "timezone": "UTC",
            "public_url": "https://engage.shop.test",
            "shop": {"name": "Test Shop", "postal_address": "1 Test Street, Springfield"},
            "send_windows": {"email": {"start": "00:00", "end": "24:00"}},
            "catch_up": "6h",
            "channels": {
                "email": "sendgrid",
                "sendgrid": {"api_host": fake.url, "rate_per_second": 20000, "timeout": 10},
            },
            "dispatch": {
                "poll_interval": "1s",
                "lease": "2s",
                "batch_size": 100,
                "workers": 8,
                "shutdown_grace": "20s",
                "backoff_base": "1s",  # the fake may refuse a connection under load: retry soon
                "backoff_max": "2s",
            },
        }
        p = Project(proj, db_url, engine, fake, settings)
        p.write_config(**dispatch)
        try:
            yield p
        finally:
            for d in p.daemons:
                if d.proc.poll() is None:
                    d.proc.kill()
                    d.proc.wait(timeout=10)
            engine.dispose()
