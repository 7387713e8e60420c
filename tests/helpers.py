"""Small builders shared by tests: a config on real folders, customers and outbox rows."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from engage.config import Config
from engage.db.models import Customer, Interaction, Message

ROOT = Path(__file__).resolve().parent.parent
SECRET = "test-secret-key-0123456789abcdef"
NOW = datetime(2026, 6, 15, 15, 0, tzinfo=UTC)  # 11:00 in New York, 16:00 in London


def make_config(tmp: Path, **overrides: Any) -> Config:
    """A Config rooted at ``tmp`` with the repo's templates and campaigns copied in."""
    if not (tmp / "templates").exists():
        shutil.copytree(ROOT / "templates", tmp / "templates")
    if not (tmp / "campaigns").exists():
        shutil.copytree(ROOT / "campaigns", tmp / "campaigns")
    data: dict[str, Any] = {
        "timezone": "UTC",
        "public_url": "https://engage.shop.test",
        "shop": {
            "name": "Test Shop",
            "url": "https://shop.test",
            "postal_address": "1 Test Street, Springfield",
            "support_email": "help@shop.test",
        },
        "channels": {"email": "file", "sms": "file", "file": {"dir": str(tmp / "outbox")}},
    }
    secrets = overrides.pop("secrets", {})
    for key, value in overrides.items():
        data[key] = value
    data["base_dir"] = tmp
    data["secrets"] = {"ENGAGE_SECRET_KEY": SECRET, **secrets}
    return Config.model_validate(data)


def add_customer(engine: Engine, cid: str, **kw: Any) -> str:
    row = {
        "id": cid,
        "email": f"{cid}@example.com",
        "phone": None,
        "first_name": cid.title(),
        "timezone": "UTC",
        "email_opt_in": True,
        "sms_opt_in": False,
        "attributes": {},
        "created_at": NOW - timedelta(days=400),
    }
    row.update(kw)
    with engine.begin() as conn:
        conn.execute(insert(Customer), [row])
    return cid


def add_interaction(
    engine: Engine,
    cid: str,
    when: datetime,
    kind: str = "order",
    amount: Any = None,
    ext: str | None = None,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Interaction),
            [
                {
                    "customer_id": cid,
                    "kind": kind,
                    "occurred_at": when,
                    "amount": amount,
                    "attributes": {},
                    "external_id": ext or f"{cid}-{kind}-{when.isoformat()}",
                }
            ],
        )


def add_message(
    engine: Engine,
    cid: str,
    *,
    campaign: str = "winback-30d",
    channel: str = "email",
    template: str = "winback",
    status: str = "planned",
    send_after: datetime = NOW,
    **kw: Any,
) -> int:
    row = {
        "dedupe_key": f"{campaign}|{cid}|{kw.pop('key', send_after.isoformat())}",
        "campaign": campaign,
        "customer_id": cid,
        "channel": channel,
        "address": None,
        "template": template,
        "status": status,
        "planned_at": NOW - timedelta(minutes=1),
        "send_after": send_after,
        "attempts": 0,
        "priority": 50,
        "counts_toward_cap": True,
    }
    row.update(kw)
    with engine.begin() as conn:
        return int(conn.execute(insert(Message).returning(Message.id), [row]).scalar_one())


def midday_zone(at: datetime) -> str:
    """A time zone where ``at`` is about noon: for tests that send on the real
    clock, whose send windows are checked at the moment of sending."""
    offset = 12 - at.astimezone(UTC).hour
    if offset > 14:
        offset -= 24
    if offset < -12:
        offset += 24
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}")
