"""Set-based writes for one batch of customers or interactions.

Each writer reads the rows the batch may touch in one query per 500 keys,
merges in Python (sequentially, so duplicates inside a batch resolve as
"last one wins"), and writes every new or changed row with one
``INSERT ... ON CONFLICT DO UPDATE`` executemany. Reading first is what lets
us report inserted / updated / unchanged honestly on both backends, and skip
the write entirely when a re-import changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from ..db.models import Customer, Interaction
from .fields import CUSTOMER_FIELDS, CustomerRec, InteractionRec, RowInvalid

Outcome = str | RowInvalid  # "inserted" | "updated" | "unchanged" | why the row failed
INSERTED, UPDATED, UNCHANGED = "inserted", "updated", "unchanged"
IN_CHUNK = 500  # keys per IN (...) list: far below SQLite's bound-parameter limit

_NEW_CUSTOMER: dict[str, Any] = {f: None for f in CUSTOMER_FIELDS} | {
    "email_opt_in": False,
    "sms_opt_in": False,
}
_INTERACTION_FIELDS = ("customer_id", "kind", "occurred_at", "amount", "attributes")


def chunks(items: Iterable[Any], size: int = IN_CHUNK) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def upsert(
    conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]], update: Sequence[str]
) -> None:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET <update> = excluded.<update>``, executemany."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c[key]], set_={c: stmt.excluded[c] for c in update}
    )
    conn.execute(stmt, list(rows))


def fetch_by(
    conn: Connection, table: Table, key: str, keys: Iterable[str], columns: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Existing rows whose ``key`` is in ``keys``, as plain dicts keyed by ``key``."""
    cols = [table.c[key], *(table.c[c] for c in columns if c != key)]
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(dict.fromkeys(keys)):
        for row in conn.execute(select(*cols).where(table.c[key].in_(chunk))).mappings():
            found[row[key]] = dict(row)
    return found


def known_customers(conn: Connection, ids: Iterable[str]) -> set[str]:
    t = Customer.__table__
    out: set[str] = set()
    for chunk in chunks(dict.fromkeys(ids)):
        out.update(conn.execute(select(t.c.id).where(t.c.id.in_(chunk))).scalars())
    return out


def unknown_customer(customer_id: str) -> RowInvalid:
    return RowInvalid("customer_id", f"unknown customer {customer_id!r}")


def write_customers(conn: Connection, recs: Sequence[CustomerRec], now: datetime) -> list[Outcome]:
    """Upsert customers on ``id``: given fields overwrite, absent ones are kept,
    attributes are merged key by key; new customers default ``created_at`` to ``now``."""
    table: Table = Customer.__table__  # type: ignore[assignment]
    existing = fetch_by(conn, table, "id", (r.id for r in recs), (*CUSTOMER_FIELDS, "attributes"))
    state: dict[str, dict[str, Any]] = {}
    dirty: dict[str, None] = {}
    outcomes: list[Outcome] = []
    for rec in recs:
        cur = state.get(rec.id) or existing.get(rec.id)
        if cur is None:
            new = {"id": rec.id, **_NEW_CUSTOMER, "created_at": now, **rec.fields}
            new["attributes"] = dict(rec.attributes)
            outcome = INSERTED
        else:
            new = {
                **cur,
                **rec.fields,
                "attributes": {**(cur["attributes"] or {}), **rec.attributes},
            }
            outcome = UNCHANGED if new == cur else UPDATED
        state[rec.id] = new
        if outcome != UNCHANGED:
            dirty[rec.id] = None
        outcomes.append(outcome)
    rows = [{**state[cid], "updated_at": now} for cid in dirty]
    upsert(conn, table, "id", rows, (*CUSTOMER_FIELDS, "attributes", "updated_at"))
    return outcomes


def write_interactions(
    conn: Connection, recs: Sequence[InteractionRec], now: datetime
) -> list[Outcome]:
    """Upsert interactions on ``external_id``; an interaction for an unknown
    customer is a row error. ``amount`` not given keeps the stored one."""
    table: Table = Interaction.__table__  # type: ignore[assignment]
    known = known_customers(conn, (r.customer_id for r in recs))
    existing = fetch_by(
        conn, table, "external_id", (r.external_id for r in recs), _INTERACTION_FIELDS
    )
    state: dict[str, dict[str, Any]] = {}
    dirty: dict[str, None] = {}
    outcomes: list[Outcome] = []
    for rec in recs:
        if rec.customer_id not in known:
            outcomes.append(unknown_customer(rec.customer_id))
            continue
        cur = state.get(rec.external_id) or existing.get(rec.external_id)
        new = {
            "external_id": rec.external_id,
            "customer_id": rec.customer_id,
            "kind": rec.kind,
            "occurred_at": rec.occurred_at,
            "amount": rec.amount,
            "attributes": dict(rec.attributes),
        }
        if cur is None:
            outcome = INSERTED
        else:
            if rec.amount is None:
                new["amount"] = cur["amount"]
            new["attributes"] = {**(cur["attributes"] or {}), **rec.attributes}
            outcome = UNCHANGED if new == cur else UPDATED
        state[rec.external_id] = new
        if outcome != UNCHANGED:
            dirty[rec.external_id] = None
        outcomes.append(outcome)
    rows = [{**state[ext], "created_at": now} for ext in dirty]
    upsert(conn, table, "external_id", rows, _INTERACTION_FIELDS)
    return outcomes
