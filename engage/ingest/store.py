"""Set-based writes for one batch of customers or interactions.

Each writer reads the rows the batch may touch in one query, merges in
Python (sequentially, so duplicates inside a batch resolve as "last one
wins"), and writes every new or changed row with the bulk loader
(``engage.db.load.load_rows``: COPY and one ``INSERT ... ON CONFLICT`` on
PostgreSQL, multi-row upserts on SQLite). Reading first is what lets us
report inserted / updated / unchanged honestly on both backends, and skip
the write entirely when a re-import changes nothing.

``FactsUpkeep`` keeps ``customer_facts`` current in the batch's transaction:
PostgreSQL's statement-level triggers do it by themselves; on SQLite the
row-level triggers are paused and the batch's customers are updated
set-based; a first full load rebuilds them once at the end instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, select

from ..db import facts as stored
from ..db.bulk import in_values
from ..db.load import load_rows
from ..db.models import Customer, Interaction
from .fields import CUSTOMER_FIELDS, CustomerRec, InteractionRec, RowInvalid

Outcome = str | RowInvalid  # "inserted" | "updated" | "unchanged" | why the row failed
INSERTED, UPDATED, UNCHANGED = "inserted", "updated", "unchanged"
IN_CHUNK = 10_000  # keys per lookup query (one array / JSON parameter each)

_NEW_CUSTOMER: dict[str, Any] = {f: None for f in CUSTOMER_FIELDS} | {
    "email_opt_in": False,
    "sms_opt_in": False,
}
_CUSTOMER_COLUMNS = ("id", *CUSTOMER_FIELDS, "attributes", "updated_at")
_INTERACTION_FIELDS = ("customer_id", "kind", "occurred_at", "amount", "score", "attributes")
_INTERACTION_COLUMNS = ("external_id", *_INTERACTION_FIELDS, "created_at")


class FactsUpkeep:
    """How one import keeps ``customer_facts`` current (see the module doc).

    ``mode``: ``triggers`` (the database's triggers do it), ``batch`` (SQLite:
    triggers paused, each writer updates its batch's customers) or
    ``rebuild`` (triggers paused, everything recomputed after the load).
    """

    def __init__(
        self, rule: stored.EngagementRule, mode: str, *, first_load: bool = False
    ) -> None:
        self.rule, self.mode = rule, mode
        self.first_load = first_load  # the table was empty when the import started

    @property
    def paused(self) -> bool:
        return self.mode != "triggers"

    def mark(self, conn: Connection, table: Table) -> int:
        """Before a batch's write (batch mode): the table's largest rowid, so
        that the rows the batch inserts are those above it (SQLite writes one
        transaction at a time, and this is inside the batch's)."""
        if self.mode != "batch":
            return 0
        name = conn.dialect.identifier_preparer.format_table(table)
        return int(conn.exec_driver_sql(f"SELECT max(rowid) FROM {name}").scalar() or 0)

    def customers_written(self, conn: Connection, mark: int, changed: Sequence[str]) -> None:
        if self.mode != "batch":
            return
        conn.exec_driver_sql(
            stored.new_customers_sql("(SELECT id, created_at FROM customer WHERE rowid > ?)"),
            (mark,),
        )
        self.refresh(conn, changed)

    def interactions_written(self, conn: Connection, mark: int, changed: Sequence[str]) -> None:
        if self.mode != "batch":
            return
        source = "(SELECT customer_id, kind, occurred_at, amount FROM interaction WHERE id > ?)"
        conn.exec_driver_sql(stored.merge_interactions_sql("sqlite", self.rule, source), (mark,))
        self.refresh(conn, changed)

    def refresh(self, conn: Connection, customer_ids: Iterable[str]) -> None:
        """Recompute these customers' facts from the log (batch mode)."""
        if self.mode != "batch":
            return
        for chunk in chunks(dict.fromkeys(customer_ids)):
            stored.refresh(conn, self.rule, chunk)


def chunks(items: Iterable[Any], size: int = IN_CHUNK) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def fetch_by(
    conn: Connection, table: Table, key: str, keys: Iterable[str], columns: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """Existing rows whose ``key`` is in ``keys``: key -> values of ``columns``."""
    cols = [table.c[key], *(table.c[c] for c in columns)]
    found: dict[str, tuple[Any, ...]] = {}
    for chunk in chunks(dict.fromkeys(keys)):
        for row in conn.execute(select(*cols).where(in_values(table.c[key], chunk))):
            found[row[0]] = tuple(row[1:])
    return found


def known_customers(conn: Connection, ids: Iterable[str]) -> set[str]:
    t = Customer.__table__
    out: set[str] = set()
    for chunk in chunks(dict.fromkeys(ids)):
        out.update(conn.execute(select(t.c.id).where(in_values(t.c.id, chunk))).scalars())
    return out


def unknown_customer(customer_id: str) -> RowInvalid:
    return RowInvalid("customer_id", f"unknown customer {customer_id!r}")


def write_customers(
    conn: Connection, recs: Sequence[CustomerRec], now: datetime, upkeep: FactsUpkeep
) -> list[Outcome]:
    """Upsert customers on ``id``: given fields overwrite, absent ones are kept,
    attributes are merged key by key; new customers default ``created_at`` to ``now``."""
    table: Table = Customer.__table__  # type: ignore[assignment]
    names = (*CUSTOMER_FIELDS, "attributes")
    outcomes: list[Outcome] = [INSERTED] * len(recs)

    def plan(indices: Sequence[int], existing: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Merge the records in order (sets their outcomes); the rows to write."""
        state: dict[str, dict[str, Any]] = {}
        dirty: dict[str, None] = {}
        for i in indices:
            rec = recs[i]
            cur = state.get(rec.id) or existing.get(rec.id)
            if cur is None:
                new = {**_NEW_CUSTOMER, "created_at": now, **rec.fields}
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
            outcomes[i] = outcome
        moved.extend(
            cid
            for cid in dirty
            if cid in existing and existing[cid]["created_at"] != state[cid]["created_at"]
        )
        return [(cid, *(state[cid][f] for f in names), now) for cid in dirty]

    def fetch(keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {
            cid: dict(zip(names, values, strict=True))
            for cid, values in fetch_by(conn, table, "id", keys, names).items()
        }

    moved: list[str] = []
    mark = upkeep.mark(conn, table)
    write_planned(
        conn, table, upkeep, [r.id for r in recs], range(len(recs)), plan, fetch,
        _CUSTOMER_COLUMNS,
    )  # fmt: skip
    upkeep.customers_written(conn, mark, moved)
    return outcomes


def write_interactions(
    conn: Connection, recs: Sequence[InteractionRec], now: datetime, upkeep: FactsUpkeep
) -> list[Outcome]:
    """Upsert interactions on ``external_id``; an interaction for an unknown
    customer is a row error. ``amount`` and ``score`` not given keep the stored ones."""
    table: Table = Interaction.__table__  # type: ignore[assignment]
    known = known_customers(conn, (r.customer_id for r in recs))
    outcomes: list[Outcome] = [
        INSERTED if r.customer_id in known else unknown_customer(r.customer_id) for r in recs
    ]
    valid = [i for i, r in enumerate(recs) if r.customer_id in known]

    def plan(indices: Sequence[int], existing: dict[str, tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Merge the records in order (sets their outcomes); the rows to write."""
        state: dict[str, tuple[Any, ...]] = {}
        dirty: dict[str, None] = {}
        for i in indices:
            rec = recs[i]
            ext = rec.external_id
            cur = state.get(ext) or existing.get(ext)
            if cur is None:
                new = (rec.customer_id, rec.kind, rec.occurred_at, rec.amount, rec.score,
                       rec.attributes)  # fmt: skip
                outcome = INSERTED
            else:
                new = (
                    rec.customer_id,
                    rec.kind,
                    rec.occurred_at,
                    cur[3] if rec.amount is None else rec.amount,
                    cur[4] if rec.score is None else rec.score,
                    {**(cur[5] or {}), **rec.attributes},
                )
                outcome = UNCHANGED if new == cur else UPDATED
            state[ext] = new
            if outcome != UNCHANGED:
                dirty[ext] = None
            outcomes[i] = outcome
        changed.extend(
            c for ext in dirty if ext in existing for c in (existing[ext][0], state[ext][0])
        )
        return [(ext, *state[ext], now) for ext in dirty]

    def fetch(keys: Iterable[str]) -> dict[str, tuple[Any, ...]]:
        return fetch_by(conn, table, "external_id", keys, _INTERACTION_FIELDS)

    changed: list[str] = []
    mark = upkeep.mark(conn, table)
    write_planned(
        conn, table, upkeep, [r.external_id for r in recs], valid, plan, fetch,
        _INTERACTION_COLUMNS,
    )  # fmt: skip
    upkeep.interactions_written(conn, mark, changed)
    return outcomes


def write_planned(
    conn: Connection,
    table: Table,
    upkeep: FactsUpkeep,
    keys: Sequence[str],
    indices: Sequence[int],
    plan: Any,
    fetch: Any,
    columns: Sequence[str],
    *,
    update: Sequence[str] | None = None,
) -> None:
    """Read the rows the records may change, merge, write what changed.

    On a first load into PostgreSQL (nothing was there when the import
    started) the batch is inserted first, conflicts ignored: only the keys
    that turn out to exist (repeated further down the file) are read and
    merged, which spares a lookup of every key of every batch.
    """
    key = columns[0]
    update = columns[1:] if update is None else update
    if not (upkeep.first_load and conn.dialect.name == "postgresql"):
        rows = plan(indices, fetch(keys[i] for i in indices))
        load_rows(conn, table, columns, rows, key=[key], update=update)
        return
    rows = plan(indices, {})
    inserted = load_rows(conn, table, columns, rows, key=[key], returning=True) or set()
    present = {row[0] for row in rows} - inserted
    if present:
        again = [i for i in indices if keys[i] in present]
        rows = plan(again, fetch(present))
        load_rows(conn, table, columns, rows, key=[key], update=update)
