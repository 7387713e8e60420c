"""Dialect-aware bulk writes shared by the planner, dispatch and ingest.

PostgreSQL: rows travel as one JSON document expanded by
``jsonb_to_recordset`` — a single statement, a single parameter, whatever the
batch size. (A multi-VALUES INSERT with thousands of placeholders spends most
of its time in the driver's query parsing, and psycopg's executemany
rowcounts are not exact.) SQLite: ``INSERT .. ON CONFLICT DO NOTHING
RETURNING`` with executemany, which the stdlib driver runs fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Table, text
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING``; returns rows actually inserted.

    Every row must carry the same columns (the first row's keys are used).
    """
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        return _pg_insert_ignore(conn, table, rows, keys)
    stmt = (
        sqlite.insert(table)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(table.c[keys[0]])
    )
    return len(conn.execute(stmt, list(rows)).all())


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} through jsonb_to_recordset")


def _pg_insert_ignore(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    dialect = postgresql.dialect()
    cols = list(rows[0])
    prep = conn.dialect.identifier_preparer
    names = ", ".join(prep.quote(c) for c in cols)
    record = ", ".join(
        f"{prep.quote(c)} {table.c[c].type.compile(dialect=dialect)}" for c in cols
    )
    conflict = ", ".join(prep.quote(k) for k in keys)
    sql = text(
        f"INSERT INTO {prep.format_table(table)} ({names}) "
        f"SELECT {names} FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r({record}) "
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING 1"
    )
    payload = json.dumps(list(rows), default=_json_default)
    return len(conn.execute(sql, {"rows": payload}).all())
