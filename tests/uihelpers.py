"""The web interface under a real uvicorn, and a small shop project to show in it.

``LiveServer`` runs any ASGI app on 127.0.0.1 in a thread (a socket bound to
port 0, so parallel runs never collide). ``make_shop`` writes a project
folder (config.yaml, campaigns across the 2026 DST changes, templates) and a
SQLite database with customers, orders, points and an outbox history, so the
CLI (``engage --config ...``) and the interface read the same thing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from sqlalchemy import Engine, insert

from engage.db import make_engine, upgrade
from engage.db.models import CampaignRun, Interaction, Message, PointsLot

from .helpers import ROOT, SECRET, add_customer
from .installed import ENGAGE as INSTALLED_ENGAGE

PASSWORD = "correct horse battery staple"
# Wednesday March 4, 2026, 10:00 in New York (EST): US clocks go forward on
# Sunday March 8, EU clocks on Sunday March 29: both inside the month view.
UI_NOW = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)
XSS_NAME = "<img src=x onerror=alert(1)>"

CAMPAIGNS = {
    # 02:30 New York does not exist on March 8 (spring forward)
    "early-bird.yaml": """
name: early-bird
description: Early-morning nudge for quiet customers
schedule: {cron: "30 2 * * *", timezone: America/New_York}
audience: {quiet_for: 30d, active_within: 365d}
channels: [email, sms]
template: winback
holdout: 10%
""",
    "paris-weekly.yaml": """
name: paris-weekly
description: Twice a week, Paris time
schedule: {cron: "0 11 * * 1,4", timezone: Europe/Paris}
audience: {min_orders: 1}
channels: [email]
template: vip-thanks
reentry: 7d
""",
    "sunday-utc.yaml": """
name: sunday-utc
description: Sundays every six hours, UTC
schedule: {cron: "0 */6 * * 0", timezone: UTC}
audience: {points_expiring_within: 30d}
channels: [email, sms]
template: points-expiring
reentry: 14d
""",
    "scripty.yaml": """
name: scripty
description: A template that tries to run script in the preview
enabled: false
schedule: {cron: "0 12 1 * *", timezone: UTC}
audience: {}
channels: [email]
template: scripty
""",
}

SCRIPTY = {
    "subject.j2": "Hello {{ customer.first_name }} <script>alert('subject')</script>\n",
    "email.html.j2": (
        "<html><head><script>document.documentElement.setAttribute('data-ran', 'yes');"
        "alert('script ran');</script></head><body onload=\"alert('onload')\">"
        "<p>Hi {{ customer.first_name }}</p><img src=x onerror=\"alert('img')\">"
        "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> {{ shop.postal_address }}"
        "</body></html>\n"
    ),
}


def config_yaml(folder: Path, *, timezone: str = "America/New_York", locale: str = "en_US") -> str:
    return f"""
timezone: {timezone}
locale: {locale}
database_url: sqlite:///{folder / 'engage.db'}
public_url: https://engage.shop.test
shop:
  name: Test Shop
  url: https://shop.test
  postal_address: 1 Test Street, Springfield
  support_email: help@shop.test
channels: {{email: file, sms: file, file: {{dir: {folder / 'outbox'}}}}}
"""


def make_shop(folder: Path, now: datetime = UI_NOW) -> Path:
    """A project folder with a database; returns the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "templates", folder / "templates")
    (folder / "templates" / "scripty").mkdir()
    for name, text in SCRIPTY.items():
        (folder / "templates" / "scripty" / name).write_text(text)
    (folder / "campaigns").mkdir()
    shutil.copy(ROOT / "campaigns" / "winback-30d.yaml", folder / "campaigns")
    for name, text in CAMPAIGNS.items():
        (folder / "campaigns" / name).write_text(text.lstrip())
    cfg = folder / "config.yaml"
    cfg.write_text(config_yaml(folder).lstrip())
    engine = make_engine(f"sqlite:///{folder / 'engage.db'}")
    upgrade(engine)
    fill_shop(engine, now)
    engine.dispose()
    return cfg


def fill_shop(engine: Engine, now: datetime) -> None:
    """Customers in several states, with orders, points and an outbox history."""
    day = timedelta(days=1)
    for n in range(1, 31):
        cid = f"c{n:03d}"
        add_customer(
            engine,
            cid,
            first_name=XSS_NAME if n == 7 else f"Customer{n}",
            last_name="O'Brien & <b>Sons</b>" if n == 7 else "Test",
            phone=f"+1202555{n:04d}",
            sms_opt_in=n % 3 == 0,
            email_opt_in=n % 5 != 0,
            tier="gold" if n % 4 == 0 else "silver",
            timezone="America/New_York" if n % 2 else "Europe/Paris",
            created_at=now - 500 * day,
        )
        quiet = (n * 9) % 120 + 1  # days since the last order
        rows: list[dict[str, Any]] = [
            {
                "customer_id": cid,
                "kind": "order",
                "occurred_at": now - (quiet + k * 40) * day,
                "amount": 20 + n + k,
                "attributes": {},
                "external_id": f"o-{cid}-{k}",
            }
            for k in range(1 + n % 3)
        ]
        rows.append(
            {
                "customer_id": cid,
                "kind": "visit",
                "occurred_at": now - (quiet + 2) * day,
                "amount": None,
                "attributes": {},
                "external_id": f"v-{cid}",
            }
        )
        lots = [
            {
                "customer_id": cid,
                "points": 100 + n,
                "remaining": 100 + n if n % 2 else 0,
                "earned_at": now - 200 * day,
                "expires_at": now + (n % 20) * day,
                "external_id": f"l-{cid}",
            },
            {
                "customer_id": cid,
                "points": 50,
                "remaining": 50,
                "earned_at": now - 400 * day,
                "expires_at": now - 30 * day,
                "external_id": f"l-old-{cid}",
            },
        ]
        with engine.begin() as conn:
            conn.execute(insert(Interaction), rows)
            conn.execute(insert(PointsLot), lots)
    # The outbox: early-bird ran on March 2 (07:30 UTC), with every outcome.
    ran = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
    with engine.begin() as conn:
        run_id = conn.execute(
            insert(CampaignRun).returning(CampaignRun.id),
            [{"campaign": "early-bird", "scheduled_at": ran, "state": "planned",
              "counts": {"matched": 9, "send": 8}, "created_at": ran, "finished_at": ran}],
        ).scalar_one()
        adhoc = conn.execute(
            insert(CampaignRun).returning(CampaignRun.id),
            [{"campaign": "winback-30d", "scheduled_at": datetime(2026, 3, 3, 18, 5, tzinfo=UTC),
              "state": "planned", "counts": {}, "created_at": ran, "finished_at": ran}],
        ).scalar_one()
        statuses = ["delivered"] * 3 + ["sent"] * 2 + ["held_out", "failed", "planned", "bounced"]
        conn.execute(
            insert(Message),
            [
                {
                    "dedupe_key": f"early-bird|{n}",
                    "campaign": "early-bird",
                    "run_id": run_id,
                    "customer_id": f"c{n + 1:03d}",
                    "channel": "email",
                    "address": f"c{n + 1:03d}@example.com",
                    "template": "winback",
                    "priority": 50,
                    "counts_toward_cap": True,
                    "status": status,
                    "planned_at": ran,
                    "send_after": ran + timedelta(hours=6),
                    "sent_at": ran + timedelta(hours=6, minutes=n)
                    if status in ("delivered", "sent", "bounced") else None,
                    "attempts": 1,
                }
                for n, status in enumerate(statuses)
            ]
            + [
                {
                    "dedupe_key": "winback|adhoc|c007",
                    "campaign": "winback-30d",
                    "run_id": adhoc,
                    "customer_id": "c007",
                    "channel": "email",
                    "address": "c007@example.com",
                    "template": "winback",
                    "priority": 50,
                    "counts_toward_cap": True,
                    "status": "delivered",
                    "planned_at": ran,
                    "send_after": ran + timedelta(days=1, hours=10),
                    "sent_at": ran + timedelta(days=1, hours=11),
                    "attempts": 1,
                }
            ],
        )


def cli(config: Path, *args: str) -> str:
    """``engage --config CONFIG ARGS`` as a subprocess; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    env["ENGAGE_SECRET_KEY"] = SECRET
    proc = subprocess.run(
        [INSTALLED_ENGAGE, "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=config.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class LiveServer:
    """An ASGI app under uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, app: Any):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()


@contextmanager
def live(app: Any) -> Iterator[LiveServer]:
    with LiveServer(app) as server:
        yield server


def login_form_token(client: httpx.Client) -> str:
    page = client.get("/login")
    assert page.status_code == 200
    marker = 'name="csrf" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


def signed_in(base: str, password: str = PASSWORD, user: str = "") -> httpx.Client:
    client = httpx.Client(base_url=base, headers={"Accept": "text/html"}, timeout=60)
    token = login_form_token(client)
    r = client.post("/login", data={"csrf": token, "password": password, "user": user})
    assert r.status_code == 303, r.text
    return client
