"""How one import writes: who keeps the facts current, and a first full load.

A first full load into an empty table (or the rerun of one that was
interrupted) writes without the table's secondary indexes and builds them
once at the end: index maintenance row by row dominated such loads (SQLite,
1M interactions: 18.7 s with the indexes, 3.3 s without plus 3.2 s to build
them; PostgreSQL, COPY of 490k: 12.4 s with, 2.0 + 2.1 s without). Keys keep
their unique indexes, so conflicts and idempotence are unchanged. The facts
are marked incomplete meanwhile (audiences read the log) and rebuilt after
the indexes. Anything else (the table holds rows) is written incrementally.

If such a load is killed, the next import of that kind (or ``engage db
upgrade``) finds the indexes missing and finishes the job.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import Connection, Index, Table, select

from ..db import facts as stored
from ..db.load import (
    add_foreign_keys,
    create_indexes,
    drop_foreign_keys,
    drop_indexes,
    missing_indexes,
    secondary_indexes,
)
from ..db.models import Customer, CustomerFacts, Interaction, PointsLot
from .store import FactsUpkeep

log = logging.getLogger(__name__)

# The table each kind loads, and the indexes its first load builds at the end.
# Points keep (customer_id, expires_at): redemptions read the lots by customer
# while the file is loaded.
FIRST_LOAD_TABLES: dict[str, Table] = {
    "customers": Customer.__table__,  # type: ignore[dict-item]
    "interactions": Interaction.__table__,  # type: ignore[dict-item]
    "points": PointsLot.__table__,  # type: ignore[dict-item]
}
_KEPT = {"ix_points_lot_customer_expires"}


def deferred_indexes(table: Table) -> list[Index]:
    """The indexes a first load of ``table`` drops and builds at the end."""
    return [ix for ix in secondary_indexes(table) if ix.name not in _KEPT]


class Loading:
    """Set up (``start``) and complete (``finish``) one import's writes.

    The facts are kept by the rule they already follow (``facts_state``), not
    the config's: a changed rule is ``engage db upgrade``'s to apply, and
    until then audiences read the log (``facts_reading``), so an import never
    rebuilds anything but what it disturbs itself. ``bulk`` (file imports)
    may take the first-load path and finishes what an interrupted one left;
    the HTTP ingest API's calls (not bulk) only read the rule: one query.
    """

    def __init__(self, conn: Connection, kind: str, now: datetime, *, bulk: bool) -> None:
        self.conn, self.kind, self.now, self.bulk = conn, kind, now, bulk
        self.table = FIRST_LOAD_TABLES.get(kind)
        self.first_load = False
        self.rebuild_facts = False
        self.rule = stored.DEFAULT_RULE

    def start(self) -> FactsUpkeep:
        conn = self.conn
        with conn.begin():
            state = stored.state(conn)
            self.rule = stored.installed_rule(conn, state)
        if self.bulk and self.table is not None and self._first_load(self.table):
            self.first_load = self.rebuild_facts = True
            with conn.begin():
                drop_indexes(conn, deferred_indexes(self.table))
                drop_foreign_keys(conn, self.table)
                stored.invalidate(conn, self.rule, self.now)
            log.info(
                "first full load: indexes built at the end",
                extra={"event": "import_first_load", "table": self.table.name},
            )
            return FactsUpkeep(self.rule, "rebuild", first_load=True)
        if self.bulk:
            with conn.begin():
                restore_indexes(conn)
            if not state.valid:  # left incomplete (a killed load, a TRUNCATE): rebuilt after
                self.rebuild_facts = True
                return FactsUpkeep(self.rule, "rebuild")
        return FactsUpkeep(self.rule, "triggers" if conn.dialect.name == "postgresql" else "batch")

    def _first_load(self, table: Table) -> bool:
        with self.conn.begin():
            empty = self.conn.execute(select(table.c[_key(table)]).limit(1)).first() is None
            interrupted = bool(missing_indexes(self.conn, [table]))
        return empty or interrupted

    def finish(self) -> None:
        """After a first full load: the indexes, then the facts (also after Ctrl-C)."""
        conn = self.conn
        if self.first_load:
            assert self.table is not None
            with conn.begin():
                create_indexes(conn, deferred_indexes(self.table))
                add_foreign_keys(conn, [self.table])
        if self.rebuild_facts:
            with conn.begin():
                stored.rebuild(conn, self.rule, self.now)
        if self.first_load and conn.dialect.name == "postgresql":  # statistics for new rows
            assert self.table is not None
            with conn.begin():
                conn.exec_driver_sql(f"ANALYZE {self.table.name}, {CustomerFacts.__tablename__}")


def _key(table: Table) -> str:
    return next(iter(table.primary_key.columns)).name


def restore_indexes(conn: Connection) -> bool:
    """Recreate what a killed first load dropped (indexes, foreign keys)."""
    tables = list(FIRST_LOAD_TABLES.values())
    missing = missing_indexes(conn, tables)
    if missing:
        create_indexes(conn, missing)
    added = add_foreign_keys(conn, tables)
    return bool(missing) or bool(added)


def restore(conn: Connection, rule: stored.EngagementRule, now: datetime) -> bool:
    """``engage db upgrade``: what a killed first load left, and the facts
    (triggers included) brought to ``rule``; True when anything had to be done."""
    repaired = restore_indexes(conn)
    return stored.ensure(conn, rule, now) or repaired
