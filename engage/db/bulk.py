"""Set-based reads and writes shared by the planner, dispatch and ingest.

A batch of rows travels as **one JSON parameter** expanded by the database:
``jsonb_to_recordset`` on PostgreSQL, ``json_each`` on SQLite. One statement
and one parameter whatever the batch size: a multi-VALUES statement with
thousands of placeholders spends most of its time in the driver's query
parsing (psycopg) or in SQLAlchemy's per-row parameter processing, and an
``executemany`` releases and retakes the GIL around every row (SQLite), which
starves the planner's background lanes.

``in_values`` is the read-side twin: membership in a Python list as one
parameter. ``all_rows`` fetches a result in one driver call.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Connection,
    String,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    cast,
    column,
    func,
    select,
    true,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import CompoundSelect, Select
from sqlalchemy.sql.sqltypes import NullType

from ..timeutil import ensure_utc


def insert_ignore(
    conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> int:
    """``INSERT … ON CONFLICT (keys) DO NOTHING``; returns the rows inserted.

    Every row must carry the same columns (the first row's keys are used)."""
    if not rows:
        return 0
    cols = list(rows[0])
    source = _rows_source(conn, table, cols, rows)
    counted = {"preserve_rowcount": True}  # SQLAlchemy keeps INSERT row counts only if asked
    if source is None:  # SQLite, values JSON cannot carry: the plain Core insert
        stmt = _insert(conn, table).on_conflict_do_nothing(index_elements=list(keys))
        return int(conn.execute(stmt, [dict(r) for r in rows], execution_options=counted).rowcount)
    # WHERE true: SQLite's upsert after a SELECT needs a WHERE to parse.
    picked = select(*(source.c[c] for c in cols)).where(true())
    stmt = _insert(conn, table).from_select(cols, picked)
    stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    return int(conn.execute(stmt, execution_options=counted).rowcount)


def _insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT (with ``on_conflict_do_nothing``)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def update_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    keys: Sequence[str],
    values: Mapping[str, Any] | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> int:
    """For every row: ``UPDATE table SET <its other columns>, <values> WHERE
    <its keys match> AND <where>``, as one statement. Returns the rows updated.

    Every row must carry the same columns (the first row's keys are used);
    ``values`` are set on every row (constants or SQL expressions). Column
    defaults and ``onupdate`` are not applied: pass every value.
    """
    if not rows:
        return 0
    cols = list(rows[0])
    per_row = [c for c in cols if c not in keys]
    source = _rows_source(conn, table, cols, rows)
    if source is None:  # SQLite, values JSON cannot carry: a statement per row
        stmt = (
            update(table)
            .where(*(table.c[k] == bindparam(f"k_{k}") for k in keys), *where)
            .values({**{c: bindparam(f"v_{c}") for c in per_row}, **(values or {})})
        )
        params = [
            {**{f"k_{k}": r[k] for k in keys}, **{f"v_{c}": r[c] for c in per_row}} for r in rows
        ]
        return sum(int(conn.execute(stmt, p).rowcount) for p in params)
    stmt = (
        update(table)
        .where(*(table.c[k] == source.c[k] for k in keys), *where)
        .values({**{c: source.c[c] for c in per_row}, **(values or {})})
    )
    return int(conn.execute(stmt).rowcount)


def _rows_source(
    conn: Connection, table: Table, cols: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> Any:
    """``rows`` as a derived table ``v`` with one typed column per name in
    ``cols``, or None (SQLite only) when JSON would change a value.

    A column with one value in every row (a plan's campaign, run, template,
    instants; an outcome's status) is bound once as a parameter; the others
    travel in one JSON text: objects read by ``json_to_recordset`` on
    PostgreSQL, an array of arrays read with ``json_extract`` on SQLite."""
    pg = conn.dialect.name == "postgresql"
    constant = {c: got[0] for c in cols if _constant(got := [r[c] for r in rows])}
    varying = [c for c in cols if c not in constant]
    if not varying:  # one column carries the rows
        varying = [cols[0]]
        del constant[cols[0]]
    if pg:
        records = json.dumps(
            [{c: r[c] for c in varying} for r in rows], default=memoized(_json_default)
        )
        source: Any = (
            func.json_to_recordset(cast(bindparam("rows", records, type_=String()), JSON))
            .table_valued(*(column(c, table.c[c].type) for c in varying))
            .render_derived(name="j", with_types=True)
        )
        values = {c: source.c[c] for c in varying}
    else:
        payload = _sqlite_payload(conn, table, varying, rows)
        if payload is None:
            return None
        source = func.json_each(bindparam("rows", payload, type_=String())).table_valued(
            "value", name="j"
        )
        # json_extract gives back exactly what the column's bind processor made
        # of the value (text, integer, real, NULL): stored as a plain insert would.
        values = {
            c: func.json_extract(source.c.value, f"$[{i}]") for i, c in enumerate(varying)
        }
    for c, value in constant.items():
        param = bindparam(f"c_{c}", value, type_=table.c[c].type)
        # PostgreSQL reads an untyped parameter in a select list as text
        values[c] = cast(param, table.c[c].type) if pg else param
    picks = (values[c].label(c) for c in cols)
    return select(*picks).select_from(source).subquery("v")


def _constant(values: list[Any]) -> bool:
    first = values[0]
    # count() first: one C loop that fails fast for the usual varying column;
    # then the types (True == 1 == 1.0 must not pass for one value).
    return values.count(first) == len(values) and (
        first is None or all(type(v) is type(first) for v in values)
    )


# Escapes in a JSON text that SQLite's JSON functions would not read back as
# written: NUL ends the text there, and a lone surrogate becomes invalid UTF-8.
_NOT_SQLITE_JSON = re.compile(
    r"\\u0000|\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f])|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}",
    re.IGNORECASE,
)
_INT64 = (-(2**63), 2**63 - 1)


def _sqlite_payload(
    conn: Connection, table: Table, cols: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> str | None:
    """The rows' ``cols`` as one JSON array of arrays, each value as its column
    type binds it on SQLite (instants as stored text, booleans as 0/1, JSON as
    text, money as a real), converted once per distinct value. None when JSON
    would change a value: NUL or a lone surrogate in a text, an integer beyond
    64 bits (JSON would make it a real), NaN or infinity."""
    columns = []
    for c in cols:
        proc = table.c[c].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        values = [r[c] for r in rows]
        if proc is not None:
            values = list(map(memoized(proc), values))
        ints = [v for v in values if type(v) is int]
        if ints and (min(ints) < _INT64[0] or max(ints) > _INT64[1]):
            return None
        columns.append(values)
    try:
        payload = json.dumps(list(zip(*columns, strict=True)) or [[]] * len(rows), allow_nan=False)
    except ValueError:  # NaN or infinity
        return None
    if ("\\u0000" in payload or "\\ud" in payload) and _NOT_SQLITE_JSON.search(payload):
        return None
    return payload


def memoized(proc: Any) -> Any:
    """``proc`` with a per-call cache for hashable values (unhashable ones pass through).

    Keyed by type too: ``True == 1 == 1.0`` must not share a converted value."""
    cache: dict[Any, Any] = {}

    def convert(value: Any) -> Any:
        key = (type(value), value)
        try:
            return cache[key]
        except KeyError:
            out = cache[key] = proc(value)
            return out
        except TypeError:  # unhashable (a dict for a JSON column)
            return proc(value)

    return convert


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        # As UTCDateTime binds it: naive is UTC (else PostgreSQL would read
        # it in the session's TimeZone).
        return ensure_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot send {type(value).__name__} through jsonb_to_recordset")


def all_rows(conn: Connection, query: Select[Any] | CompoundSelect) -> list[tuple[Any, ...]]:
    """Every row of ``query``, fetched at once.

    On SQLite the database builds one JSON array of the rows: the driver then
    releases the GIL once for the statement instead of once per row, which
    matters on a background thread (see ``engage.planning.pipeline``). Values come back
    as JSON gives them, without the column types' result processing: text,
    integers and NULL exactly, reals to 15 significant digits only, and no
    BLOBs. The callers read text and integers only.
    """
    if conn.dialect.name != "sqlite":
        return [tuple(row) for row in conn.execute(query)]
    rows = query.subquery()
    payload = conn.execute(select(func.json_group_array(func.json_array(*rows.c)))).scalar_one()
    return [tuple(row) for row in json.loads(payload)]


class _ValueList(TypeDecorator[list[Any]]):
    """A Python list bound as one text parameter: a JSON array on SQLite (read
    with ``json_each``), an array literal on PostgreSQL (cast to an array of
    the column's type in the statement, see ``_in_values_pg``)."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: Any) -> None:
        super().__init__()
        self.item_type = item_type

    def load_dialect_impl(self, dialect: Any) -> Any:
        # PostgreSQL: no "::VARCHAR" on the parameter. Untyped, it takes the
        # array type of the CAST around it when the statement is parsed, so
        # the planner sees an array of known length, as for a list parameter;
        # a text parameter would be cast at run time, an array of unknown length.
        return NullType() if dialect.name == "postgresql" else String()

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return value
        proc = self.item_type.dialect_impl(dialect).bind_processor(dialect)
        items = list(value) if proc is None else [proc(v) for v in value]
        if dialect.name == "postgresql":
            return _pg_array(items)
        return json.dumps(items, default=_json_default)


def _pg_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal, every item quoted:
    ``{"a","b"}``. Why not a list parameter: psycopg adapts a list item by item
    in Python (about 2 µs each, 10 ms for a planner batch's 5,000 ids), where
    this is one join."""
    items = [v if type(v) is str else _pg_item(v) for v in values]
    text = '","'.join(items)
    if '"' in text or "\\" in text:  # escaped only when some item needs it
        text = '","'.join(i.replace("\\", "\\\\").replace('"', '\\"') for i in items)
    return '{"' + text + '"}' if items else "{}"


def _pg_item(value: Any) -> str:
    """An item's text in an array literal (read back with the column's type)."""
    if isinstance(value, str):  # a subclass: a StrEnum's value, say
        return str.__str__(value)
    if isinstance(value, date):  # datetime too: ISO 8601, offset included
        return value.isoformat()
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise TypeError(f"in_values cannot hold {type(value).__name__} values on PostgreSQL")


class _InValues(FunctionElement[bool]):
    """``column IN (values)``, compiled per dialect (see ``in_values``): a
    function element of two arguments, the column and the bound list, which
    is SQLAlchemy's public way to a custom construct that its statement cache
    can key (``inherit_cache``; the arguments are traversed like any others).

    The values are a bound parameter, not part of the statement, so a query
    using this compiles once and comes from SQLAlchemy's cache afterwards
    (a planner batch, a dispatch batch: the same statement with another list).
    """

    name = "in_values"
    type = Boolean()
    inherit_cache = True

    def self_group(self, against: Any = None) -> Any:
        # Already a predicate: without this, SQLite (no native booleans) would get
        # "(x IN ...) = 1", which hides the IN from the query planner.
        return self


def _args(element: FunctionElement[Any]) -> list[Any]:
    return list(element.clauses)


@compiles(_InValues)
def _in_values_default(element: _InValues, compiler: Any, **kw: Any) -> str:
    # str(query) and other dialects: a plain IN of the one bound list.
    col, param = _args(element)
    return str(compiler.process(col.in_(param), **kw))


@compiles(_InValues, "sqlite")
def _in_values_sqlite(element: _InValues, compiler: Any, **kw: Any) -> str:
    col, param = _args(element)
    values: Any = select(column("value")).select_from(func.json_each(param))
    return str(compiler.process(col.in_(values.scalar_subquery()), **kw))


@compiles(_InValues, "postgresql")
def _in_values_pg(element: _InValues, compiler: Any, **kw: Any) -> str:
    from sqlalchemy.dialects.postgresql import ARRAY

    col, param = _args(element)
    # Not VARCHAR(n)[]: that cast would cut longer values to n characters,
    # and a cut value can equal a stored one.
    item = String() if isinstance(col.type, String) else col.type
    return str(compiler.process(col == any_(cast(param, ARRAY(item))), **kw))


def in_values(column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """Membership in a list of Python values, cheap on every backend.

    PostgreSQL gets ``column = ANY(CAST(:literal AS type[]))``: one text
    parameter whatever the list length. An ``IN (...)`` list of thousands of
    placeholders costs more in psycopg's query conversion than the query
    itself, and a list parameter is adapted item by item. SQLite gets
    ``IN (SELECT value FROM json_each(:json))``: also one parameter, where an
    ``IN`` list makes SQLAlchemy expand and process a placeholder per value.
    """
    return _InValues(column, bindparam(None, list(values), type_=_ValueList(column.type)))


class _NoIndex(FunctionElement[Any]):
    """A column the query planner must not pick an index for (see ``no_index``)."""

    name = "no_index"
    inherit_cache = True


@compiles(_NoIndex)
def _no_index_default(element: _NoIndex, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(_args(element)[0], **kw))


@compiles(_NoIndex, "sqlite")
def _no_index_sqlite(element: _NoIndex, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(_args(element)[0], **kw))


def no_index(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The column, with SQLite told not to drive the query by an index on it.

    SQLite compiles it as unary ``+column`` (a documented no-op that
    disqualifies the term from index use); other backends get the column.
    Why: next to ``in_values`` SQLite cannot estimate the size of the
    ``json_each`` list and may prefer an index on a low-selectivity column,
    e.g. ``message.status = 'planned'``, which scans every planned message of
    the outbox instead of probing the batch's customers.
    """
    element = _NoIndex(column)
    element.type = column.type  # reads as the column does
    return element
