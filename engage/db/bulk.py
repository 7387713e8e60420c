"""Dialect-aware bulk writes shared by ingest, planner and dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    """``INSERT ... ON CONFLICT (keys) DO NOTHING``; returns rows actually inserted."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(table)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(table.c[keys[0]])
    )
    # executemany rowcounts are unreliable with psycopg; RETURNING is exact.
    return len(conn.execute(stmt, list(rows)).all())
