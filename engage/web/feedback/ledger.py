"""Which provider events were already applied (the ``webhook_event`` table),
and the writes every kind of feedback shares.

Outcomes of one event, as counted in ``/metrics`` and in responses:

* ``applied``: it changed (or confirmed) a message, a suppression, consent or
  an interaction;
* ``duplicate``: its id was applied before (a redelivered batch);
* ``unknown_message``: no outbox message of ours matches it (a provider
  account shared with other systems sends those too);
* ``stale``: a state change the message is past (a late ``delivered`` after
  ``bounced``): states never move backwards;
* ``deferred``: the message is still ``sending`` (its send is being recorded
  right now): not marked as applied, so the provider's retry applies it;
* ``ignored``: a kind engage does not act on (``processed``, ``deferred``
  emails, Twilio's ``queued``...), recorded as seen;
* ``invalid``: not a well-formed event.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Table, bindparam, delete, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.types import JSON, String

from ...db.bulk import in_values, insert_ignore
from ...db.models import Customer, Interaction, WebhookEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLIED = "applied"
DUPLICATE = "duplicate"
UNKNOWN = "unknown_message"
STALE = "stale"
DEFERRED = "deferred"
IGNORED = "ignored"
INVALID = "invalid"

W = cast(Table, WebhookEvent.__table__)
C = cast(Table, Customer.__table__)
I = cast(Table, Interaction.__table__)  # noqa: E741

Outcomes = Counter[tuple[str, str]]  # (event kind, outcome) -> events


def claim(
    conn: Connection, provider: str, events: Iterable[tuple[str, str]], now: datetime
) -> set[str]:
    """Record ``(event_id, kind)`` pairs as applied; returns the ids that were
    new. One statement: the ids travel as arrays (PostgreSQL) or one JSON
    document (SQLite). A concurrent request holding the same ids makes
    PostgreSQL wait for it, then count them as already there."""
    pairs = dict(events)  # an id twice in one batch: the first kind wins
    if not pairs:
        return set()
    ids = list(pairs)
    kinds = [pairs[i][:32] for i in ids]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        stmt = text(
            "INSERT INTO webhook_event (provider, event_id, kind, received_at) "
            "SELECT :provider, e.id, e.kind, :now "
            "FROM unnest(CAST(:ids AS text[]), CAST(:kinds AS text[])) AS e(id, kind) "
            "ON CONFLICT DO NOTHING RETURNING event_id"
        ).bindparams(
            bindparam("now", type_=W.c.received_at.type),
            bindparam("ids", type_=ARRAY(String())),
            bindparam("kinds", type_=ARRAY(String())),
        )
        params: dict[str, Any] = {"provider": provider, "now": now, "ids": ids, "kinds": kinds}
    else:
        stmt = text(
            "INSERT INTO webhook_event (provider, event_id, kind, received_at) "
            "SELECT :provider, json_extract(value, '$[0]'), json_extract(value, '$[1]'), :now "
            "FROM json_each(:rows) WHERE true ON CONFLICT DO NOTHING RETURNING event_id"
        ).bindparams(bindparam("now", type_=W.c.received_at.type), bindparam("rows", type_=JSON()))
        params = {
            "provider": provider,
            "now": now,
            "rows": [list(p) for p in zip(ids, kinds, strict=True)],
        }
    return set(conn.execute(stmt, params).scalars().all())


def transaction(engine: Engine, fn: Callable[..., T], *args: Any, attempts: int = 4) -> T:
    """``fn(conn, *args)`` in one transaction, retried when the database gave
    up on it for reasons a retry cures: a deadlock or serialization failure
    (PostgreSQL), a lock wait that timed out (SQLite). Everything it does is
    idempotent and rolled back on failure, so a retry is safe."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                return fn(conn, *args)
        except OperationalError as exc:
            if attempt == attempts or not _retryable(exc):
                raise
            log.info(
                "transaction retried",
                extra={
                    "event": "webhook_retry",
                    "attempt": attempt,
                    "cause": type(exc.orig).__name__,
                },
            )
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")


def _retryable(exc: OperationalError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in ("40P01", "40001"):
        return True
    return "database is locked" in str(exc.orig)


def release(conn: Connection, provider: str, ids: Sequence[str]) -> None:
    """Forget ``ids`` (deferred events): the provider's retry will apply them."""
    if ids:
        conn.execute(delete(W).where(W.c.provider == provider, in_values(W.c.event_id, ids)))


def prune(engine: Engine, before: datetime) -> int:
    """Delete applied-event records older than ``before``; returns how many."""
    with engine.begin() as conn:
        return int(conn.execute(delete(W).where(W.c.received_at < before)).rowcount)


def set_consent(
    conn: Connection, channel: str, customer_ids: Iterable[str], value: bool, now: datetime
) -> int:
    """Set ``email_opt_in`` or ``sms_opt_in`` of these customers; returns how many changed."""
    ids = sorted(set(customer_ids))  # a fixed order: concurrent batches lock rows alike
    if not ids:
        return 0
    flag = C.c.email_opt_in if channel == "email" else C.c.sms_opt_in
    stmt = (
        update(C)
        .where(in_values(C.c.id, ids), flag.is_not(value))
        .values({flag.key: value, "updated_at": now})
    )
    return int(conn.execute(stmt).rowcount)


def add_interactions(conn: Connection, rows: Sequence[dict[str, Any]], now: datetime) -> int:
    """Insert interactions (``customer_id``, ``kind``, ``occurred_at``,
    ``attributes``, ``external_id``); an ``external_id`` already there is kept."""
    if not rows:
        return 0
    full = [
        {
            "customer_id": r["customer_id"],
            "kind": r["kind"],
            "occurred_at": r["occurred_at"],
            "amount": None,
            "attributes": r.get("attributes") or {},
            "external_id": r["external_id"],
            "created_at": now,
        }
        for r in rows
    ]
    return insert_ignore(conn, I, full, ["external_id"])
