"""Dialect-aware bulk writes shared by the planner, dispatch and ingest.

PostgreSQL: rows travel as one JSON document expanded by
``jsonb_to_recordset`` — a single statement, a single parameter, whatever the
batch size. (A multi-VALUES INSERT with thousands of placeholders spends most
of its time in the driver's query parsing, and psycopg's executemany
rowcounts are not exact.) SQLite: the same shape, one JSON array expanded by
``json_each``.

``in_values`` is the read-side twin: membership in a Python list as one
array parameter on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ColumnElement,
    Connection,
    Index,
    String,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    cast,
    column,
    func,
    select,
    text,
    update,
)

# PostgreSQL's dialect module is imported where it is used: on SQLite it is
# never needed, and it was a fifth of the imports of the dispatcher's helper
# process (0.09 s of CPU at every start).
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.selectable import CompoundSelect, Select
from sqlalchemy.sql.visitors import InternalTraversal

from ..timeutil import ensure_utc


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
    if conn.dialect.name == "sqlite":
        return _sqlite_insert_ignore(conn, table, rows, keys)
    stmt = (
        sqlite.insert(table)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(table.c[keys[0]])
    )
    return len(conn.execute(stmt, list(rows)).all())


def _sqlite_insert_ignore(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    """One statement whatever the batch size: the rows travel as one JSON
    array expanded by ``json_each`` (see ``_SqliteJsonRows``).

    Why not the Core insert: SQLAlchemy's insertmanyvalues path builds and
    bind-processes a parameter dict per row, several times the cost of the
    insert itself at 100,000 rows. Why not the driver's ``executemany``, which
    costs the same on one thread: it releases and retakes the GIL around every
    row, and each retake waits out the switch interval of any busy thread, so
    a planner writing on one thread while deciding on another would crawl. One
    statement releases the GIL once.
    """
    prep = conn.dialect.identifier_preparer
    cols = list(rows[0])
    data = _SqliteJsonRows(conn.dialect, table, cols, rows)
    into = f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in cols)}) "
    conflict = f"ON CONFLICT ({', '.join(prep.quote(k) for k in keys)}) DO NOTHING"
    if data.payload is None:
        sql = f"{into}VALUES ({', '.join('?' for _ in cols)}) {conflict}"
        return int(conn.exec_driver_sql(sql, data.tuples()).rowcount)
    picks = ", ".join(data.picks("value"))
    sql = f"{into}SELECT {picks} FROM json_each(?) WHERE true {conflict}"
    return int(conn.exec_driver_sql(sql, (*data.constants, data.payload)).rowcount)


class _SqliteJsonRows:
    """Rows of ``table`` as one JSON array for SQLite's ``json_each``.

    Each column's bind processor (the column type's own, so stored values are
    identical) runs once per distinct value: a plan's instants take a handful
    of values. ``json_extract`` returns SQL text, integers, reals and NULL
    exactly as the processed values would bind. A column with the same value
    in every row (a plan's campaign, run, template, instants; an outcome's
    status) is bound once instead: less JSON to build and to parse.
    ``payload`` is None when JSON would change a value (NUL, which ends text
    in SQLite's JSON; lone surrogates; integers beyond 64 bits; NaN or
    infinity): callers then bind ``tuples()`` row by row instead.
    """

    def __init__(
        self, dialect: Any, table: Table, cols: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> None:
        self.columns: list[list[Any]] = []
        for c in cols:
            proc = table.c[c].type._cached_bind_processor(dialect)
            values = [row[c] for row in rows]
            self.columns.append(values if proc is None else list(map(_memoized(proc), values)))
        self.constants: list[Any] = []
        self._slots: list[int | None] = []  # JSON array index of each column, None: constant
        varying: list[list[Any]] = []
        for values in self.columns:
            first = values[0]
            # count() first: one C loop that fails fast for the usual varying column;
            # then the types (True == 1 == 1.0), which text and NULL cannot mix.
            if values.count(first) == len(values) and (
                first is None or type(first) is str or all(type(v) is type(first) for v in values)
            ):
                self._slots.append(None)
                self.constants.append(first)
            else:
                self._slots.append(len(varying))
                varying.append(values)
        try:
            payload: str | None = json.dumps(
                list(zip(*varying, strict=True)) if varying else [[]] * len(rows), allow_nan=False
            )
        except ValueError:  # NaN or infinity: no such JSON number
            payload = None
        self.payload = None if payload is None or _NOT_JSON_SAFE.search(payload) else payload

    def picks(self, value: str) -> list[str]:
        """Per column: ``?`` (a constant, bound in ``constants`` order) or the
        ``json_extract`` of its slot from the ``json_each`` column ``value``."""
        return ["?" if i is None else f"json_extract({value}, '$[{i}]')" for i in self._slots]

    def tuples(self) -> list[tuple[Any, ...]]:
        return list(zip(*self.columns, strict=True))


# In a JSON text: an escaped NUL or lone surrogate, or a number of 19+ digits
# (also matches such digits inside a string: then the safe path is taken anyway).
_NOT_JSON_SAFE = re.compile(r"\\u0000|\\ud[89a-f]|\d{19}", re.IGNORECASE)


def _bound(dialect: Any, type_: Any, value: Any) -> Any:
    """``value`` as the column type binds it on ``dialect``."""
    proc = type_._cached_bind_processor(dialect)
    return value if proc is None else proc(value)


def _memoized(proc: Any) -> Any:
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


def _pg_insert_ignore(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: Sequence[str]
) -> int:
    dialect = conn.dialect
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
    # A plan's rows share a few instants: serialise each distinct one once.
    payload = json.dumps(list(rows), default=_memoized(_json_default))
    return len(conn.execute(sql, {"rows": payload}).all())


def update_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key: str,
    guard: Mapping[str, Any] | None = None,
) -> int:
    """For every row: ``UPDATE table SET <its other columns> WHERE key = <its
    key>`` and every ``guard`` column equals its value. Returns the number of
    rows updated.

    Every row must carry the same columns (the first row's keys are used). One
    statement whatever the number of rows, the targets found by their key:
    PostgreSQL joins the rows as one JSON document (``jsonb_to_recordset``),
    SQLite as one JSON array (``json_each``), with the guard columns kept from
    driving the query (``+column``). (A statement per row was psycopg's
    executemany, prepared generically: from the statistics of an outbox that
    was empty when last analyzed, PostgreSQL planned each as a sequential
    scan. On SQLite one statement costs 40% of an executemany's CPU.)
    Column defaults and ``onupdate`` are not applied: pass every value.
    """
    if not rows:
        return 0
    guard = dict(guard or {})
    if any(v is None for v in guard.values()):
        raise ValueError("update_rows guards compare with =, never with NULL")
    cols = [c for c in rows[0] if c != key]
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import JSONB

        values = (
            func.jsonb_to_recordset(cast(bindparam("rows", type_=String()), JSONB))
            .table_valued(*(column(c, table.c[c].type) for c in [key, *cols]))
            .render_derived(name="v", with_types=True)
        )
        stmt = (
            update(table)
            .where(table.c[key] == values.c[key], *(table.c[c] == v for c, v in guard.items()))
            .values({c: values.c[c] for c in cols})
        )
        payload = json.dumps(list(rows), default=_memoized(_json_default))
        return int(conn.execute(stmt, {"rows": payload}).rowcount)
    prep = conn.dialect.identifier_preparer
    name = prep.format_table(table)
    data = _SqliteJsonRows(conn.dialect, table, [key, *cols], rows)
    where = [f"+{name}.{prep.quote(c)} = ?" for c in guard]
    guard_values = [_bound(conn.dialect, table.c[c].type, v) for c, v in guard.items()]
    if data.payload is None:  # values JSON would change: one row at a time
        sets = ", ".join(f"{prep.quote(c)} = ?" for c in cols)
        sql = f"UPDATE {name} SET {sets} WHERE {' AND '.join([f'{prep.quote(key)} = ?', *where])}"
        params = [(*row[1:], row[0], *guard_values) for row in data.tuples()]
        return int(conn.exec_driver_sql(sql, params).rowcount)
    key_pick, *picks = data.picks("v.value")
    sets = ", ".join(f"{prep.quote(c)} = {pick}" for c, pick in zip(cols, picks, strict=True))
    sql = (
        f"UPDATE {name} SET {sets} FROM json_each(?) AS v "
        f"WHERE {' AND '.join([f'{name}.{prep.quote(key)} = {key_pick}', *where])}"
    )
    # Parameters in the order of their "?": SET constants, the JSON, the key
    # (if constant), the guards.
    constants = iter(data.constants)
    key_constant = [next(constants)] if key_pick == "?" else []
    set_constants = list(constants)
    return int(
        conn.exec_driver_sql(
            sql, (*set_constants, data.payload, *key_constant, *guard_values)
        ).rowcount
    )


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
    """A Python list bound as one parameter: a JSON array on SQLite (read with
    ``json_each``), an array of the column's type on PostgreSQL."""

    impl = String
    cache_ok = True

    def __init__(self, item_type: Any) -> None:
        super().__init__()
        self.item_type = item_type

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            # Not VARCHAR(n)[]: that cast would cut longer values to n
            # characters, and a cut value can equal a stored one.
            item = String() if isinstance(self.item_type, String) else self.item_type
            return dialect.type_descriptor(ARRAY(item))
        return dialect.type_descriptor(String())

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None or dialect.name == "postgresql":
            return value  # the ARRAY binds each item with the item type
        proc = self.item_type._cached_bind_processor(dialect)
        items = list(value) if proc is None else [proc(v) for v in value]
        return json.dumps(items, default=_json_default)


class _InValues(ColumnElement[bool]):
    """``column IN (values)``, compiled per dialect (see ``in_values``).

    The values are a bound parameter, not part of the statement, so a query
    using this compiles once and comes from SQLAlchemy's cache afterwards
    (a planner batch, a dispatch batch: the same statement with another list).
    """

    inherit_cache = True
    type = Boolean()
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("param", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], values: Sequence[Any]) -> None:
        self.column = column
        self.param = bindparam(None, list(values), type_=_ValueList(column.type))

    @property
    def _from_objects(self) -> list[Any]:  # type: ignore[override]
        return self.column._from_objects

    def self_group(self, against: Any = None) -> Any:
        # Already a predicate: without this, SQLite (no native booleans) would get
        # "(x IN ...) = 1", which hides the IN from the query planner.
        return self


@compiles(_InValues)
def _in_values_default(element: _InValues, compiler: Any, **kw: Any) -> str:
    # str(query) and other dialects: a plain IN of the one bound list.
    return str(compiler.process(element.column.in_(element.param), **kw))


@compiles(_InValues, "sqlite")
def _in_values_sqlite(element: _InValues, compiler: Any, **kw: Any) -> str:
    values: Any = select(column("value")).select_from(func.json_each(element.param))
    return str(compiler.process(element.column.in_(values.scalar_subquery()), **kw))


@compiles(_InValues, "postgresql")
def _in_values_pg(element: _InValues, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column == any_(element.param), **kw))


class _NoIndex(ColumnElement[Any]):
    """A column the query planner must not pick an index for (see ``no_index``)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column
        self.type = column.type

    @property
    def _from_objects(self) -> list[Any]:  # type: ignore[override]
        return self.column._from_objects


@compiles(_NoIndex)
def _no_index_default(element: _NoIndex, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(_NoIndex, "sqlite")
def _no_index_sqlite(element: _NoIndex, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.column, **kw))


def no_index(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The column, with SQLite told not to drive the query by an index on it.

    SQLite compiles it as unary ``+column`` (a documented no-op that
    disqualifies the term from index use); other backends get the column.
    Why: next to ``in_values`` SQLite cannot estimate the size of the
    ``json_each`` list and may prefer an index on a low-selectivity column,
    e.g. ``message.status = 'planned'``, which scans every planned message of
    the outbox instead of probing the batch's customers.
    """
    return _NoIndex(column)


def in_values(column: ColumnElement[Any], values: Sequence[Any]) -> ColumnElement[bool]:
    """Membership in a list of Python values, cheap on every backend.

    PostgreSQL gets ``column = ANY(:array)``: one parameter whatever the list
    length. An ``IN (...)`` list of thousands of placeholders costs more in
    psycopg's query conversion than the query itself. SQLite gets
    ``IN (SELECT value FROM json_each(:json))``: also one parameter, where an
    ``IN`` list makes SQLAlchemy expand and process a placeholder per value.
    """
    return _InValues(column, values)


# --- the bulk loader: imports and the sample generator ---------------------------------
#
# ``load_rows`` writes rows of plain Python values (the column types' own:
# aware datetimes, Decimal, dict for JSON) as fast as each backend takes them.
# PostgreSQL: ``COPY`` (binary-free text protocol, no per-row statement) into
# the table, or into a temporary table and then one ``INSERT ... SELECT ... ON
# CONFLICT`` when rows may already exist. SQLite: multi-row ``INSERT ...
# VALUES (...), (...) [ON CONFLICT ...]`` statements of up to ``_SQLITE_ROWS``
# rows (measured 1.4x an ``executemany`` of the same rows, 2.1x one JSON
# array through ``json_each``). Values are converted column by column, each
# distinct value once, to exactly what SQLAlchemy would bind.

_SQLITE_ROWS = 100  # rows per VALUES statement (x columns: far below the variable limit)
_SQLITE_MAX_VARS = 32_766


def load_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    key: Sequence[str] | None = None,
    update: Sequence[str] = (),
    converted: bool = False,
    returning: bool = False,
) -> set[Any] | None:
    """Write ``rows`` (value sequences in ``columns`` order) into ``table``.

    ``key`` names the columns of a unique constraint: a row whose key exists
    updates the ``update`` columns (nothing when empty) instead of failing.
    Without ``key`` the rows must be new. Column defaults are not applied:
    pass every value the table needs. Rows must not repeat a key.
    ``converted``: the values are already what the driver takes (SQLite's
    instant text, JSON text), as the sample generator makes them.
    ``returning`` (PostgreSQL, with a one-column ``key`` and no ``update``):
    the keys of the rows actually inserted, the others having been present.
    """
    if returning and (conn.dialect.name != "postgresql" or key is None or len(key) != 1):
        raise ValueError("returning: PostgreSQL, one key column, conflicts ignored")
    if not rows:
        return set() if returning else None
    if conn.dialect.name == "postgresql":
        return _pg_load(conn, table, list(columns), rows, key, update, converted, returning)
    _sqlite_load(conn, table, list(columns), rows, key, update, converted)
    return None


def _conflict_clause(prep: Any, key: Sequence[str] | None, update: Sequence[str]) -> str:
    if key is None:
        return ""
    target = ", ".join(prep.quote(k) for k in key)
    if not update:
        return f" ON CONFLICT ({target}) DO NOTHING"
    sets = ", ".join(f"{prep.quote(c)} = excluded.{prep.quote(c)}" for c in update)
    return f" ON CONFLICT ({target}) DO UPDATE SET {sets}"


def _sqlite_load(
    conn: Connection,
    table: Table,
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str] | None,
    update: Sequence[str],
    converted: bool,
) -> None:
    prep = conn.dialect.identifier_preparer
    values = rows if converted else _converted(conn.dialect, table, columns, rows)
    width = len(columns)
    per = max(1, min(_SQLITE_ROWS, _SQLITE_MAX_VARS // width))
    head = (
        f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in columns)})"
        " VALUES "
    )
    one = "(" + ", ".join("?" * width) + ")"
    tail = _conflict_clause(prep, key, update)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        full = len(values) - len(values) % per
        if full:
            sql = head + ", ".join([one] * per) + tail
            flat = [v for row in values[:full] for v in row]
            step = per * width
            for start in range(0, len(flat), step):
                cursor.execute(sql, flat[start : start + step])
        if full < len(values):
            cursor.executemany(head + one + tail, values[full:])
    finally:
        cursor.close()


def _pg_load(
    conn: Connection,
    table: Table,
    columns: list[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str] | None,
    update: Sequence[str],
    converted: bool,
    returning: bool,
) -> set[Any] | None:
    prep = conn.dialect.identifier_preparer
    names = ", ".join(prep.quote(c) for c in columns)
    values = rows if converted else _converted(conn.dialect, table, columns, rows)
    # Python values travel in COPY's binary format (a third of the client's
    # CPU per row of the text format); pre-converted text in the text format.
    types = None if converted else [_pg_copy_type(table.c[c].type) for c in columns]
    target = prep.format_table(table)
    if key is not None:
        stage = _pg_stage(conn, table, columns)
        _pg_copy(conn, f"COPY {stage} ({names}) FROM STDIN", values, types)
        tail = f" RETURNING {prep.quote(key[0])}" if returning else ""
        result = conn.exec_driver_sql(
            f"INSERT INTO {target} ({names}) SELECT {names} FROM {stage}"
            f"{_conflict_clause(prep, key, update)}{tail}"
        )
        inserted = set(result.scalars()) if returning else None
        conn.exec_driver_sql(f"TRUNCATE {stage}")
        return inserted
    _pg_copy(conn, f"COPY {target} ({names}) FROM STDIN", values, types)
    return None


def _pg_copy(
    conn: Connection, sql: str, values: Sequence[Sequence[Any]], types: list[str] | None
) -> None:
    raw: Any = conn.connection.driver_connection
    if types is not None:
        sql += " (FORMAT BINARY)"
    with raw.cursor() as cur, cur.copy(sql) as copy:
        if types is not None:
            copy.set_types(types)
        for row in values:
            copy.write_row(row)


def _pg_copy_type(type_: Any) -> str:
    """The PostgreSQL type a column's values are sent as in binary COPY."""
    from sqlalchemy import BigInteger, Integer, Numeric, SmallInteger

    from .models import UTCDateTime

    for sa_type, name in (
        (UTCDateTime, "timestamptz"),
        (JSON, "text"),  # the JSON text _converted made: json's binary input is its text
        (Boolean, "bool"),
        (SmallInteger, "int2"),
        (BigInteger, "int8"),
        (Integer, "int4"),
        (Numeric, "numeric"),
    ):
        if isinstance(type_, sa_type) or isinstance(getattr(type_, "impl", None), sa_type):
            return name
    return "text"  # String, Text: the same bytes as varchar


def _pg_stage(conn: Connection, table: Table, columns: list[str]) -> str:
    """A temporary table for ``columns`` of ``table`` on this connection
    (created once per connection, emptied after every use)."""
    prep = conn.dialect.identifier_preparer
    name = f"engage_stage_{table.name}_{zlib.crc32(','.join(columns).encode()):08x}"
    cols = ", ".join(
        f"{prep.quote(c)} {table.c[c].type.compile(dialect=conn.dialect)}" for c in columns
    )
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} ({cols})")
    return name


def _converted(
    dialect: Any, table: Table, columns: list[str], rows: Sequence[Sequence[Any]]
) -> list[tuple[Any, ...]]:
    """``rows`` as the driver takes them: column by column, each column's
    conversion applied once per distinct value (instants once per value)."""
    converters = [_converter(dialect, table.c[c].type) for c in columns]
    if all(f is None for f in converters):
        return [tuple(row) for row in rows]
    transposed = zip(*rows, strict=True)
    cols = [
        c if f is None else [None if v is None else f(v) for v in c]  # sparse columns: no call
        for f, c in zip(converters, transposed, strict=True)
    ]
    return list(zip(*cols, strict=True))


def _converter(dialect: Any, type_: Any) -> Any:
    from .models import UTCDateTime

    if dialect.name == "postgresql":
        if isinstance(type_, UTCDateTime):
            return _pg_instant
        if isinstance(type_, JSON):
            return _json_memo(_json_text)
        return None  # psycopg adapts str, int, bool, Decimal itself
    if isinstance(type_, UTCDateTime):
        return _last_remembered(_sqlite_instant)
    proc = type_._cached_bind_processor(dialect)
    if proc is None:
        return None
    return _json_memo(proc) if isinstance(type_, JSON) else _memoized(proc)


def _pg_instant(value: datetime | None) -> datetime | None:
    # Naive would be read in the session's time zone: UTCDateTime's rule is UTC.
    return None if value is None else ensure_utc(value)


def _sqlite_instant(value: datetime | None) -> str | None:
    """What ``UTCDateTime`` binds on SQLite (naive UTC, SQLAlchemy's DATETIME
    text form ``YYYY-MM-DD HH:MM:SS.ffffff``), from C-level methods."""
    if value is None:
        return None
    if value.tzinfo is not None:
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        value = value.replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _last_remembered(convert: Any) -> Any:
    """``convert``, answering a value equal to the previous one from memory
    (a batch's import instant; consecutive rows of one customer)."""
    last: list[Any] = [object(), None]

    def remembered(value: Any) -> Any:
        if value is last[0] or value == last[0]:
            return last[1]
        out = convert(value)
        last[0], last[1] = value, out
        return out

    return remembered


def _json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _json_memo(encode: Any) -> Any:
    """``encode`` for JSON objects, each distinct flat object encoded once
    (imported attributes repeat: ``{}``, a country, a campaign name)."""
    seen: dict[Any, Any] = {}
    empty = encode({})

    def convert(value: Any) -> Any:
        if type(value) is not dict:
            return encode(value)
        if not value:
            return empty
        try:
            # Types too: True == 1 == 1.0 must not share an encoding.
            key = (tuple(value.items()), tuple(map(type, value.values())))
            return seen[key]
        except KeyError:
            if len(seen) > 10_000:
                seen.clear()
            out = seen[key] = encode(value)
            return out
        except TypeError:  # a nested list or object: not hashable
            return encode(value)

    return convert


# --- secondary indexes around a first full load ----------------------------------------


def secondary_indexes(table: Table) -> list[Index]:
    """The table's non-unique indexes (unique ones enforce keys; they stay)."""
    return sorted((ix for ix in table.indexes if not ix.unique), key=lambda ix: str(ix.name))


def existing_indexes(conn: Connection, table: Table) -> set[str]:
    from sqlalchemy import inspect

    return {str(ix["name"]) for ix in inspect(conn).get_indexes(table.name)}


def drop_indexes(conn: Connection, indexes: Sequence[Index]) -> None:
    for index in indexes:
        index.drop(conn, checkfirst=True)


def create_indexes(conn: Connection, indexes: Sequence[Index]) -> None:
    """Create the indexes that do not exist (PostgreSQL sorts with more memory)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
    for index in indexes:
        index.create(conn, checkfirst=True)


def drop_foreign_keys(conn: Connection, table: Table) -> None:
    """PostgreSQL only: a first load checks each row's references itself (and
    ``add_foreign_keys`` validates them all in one pass afterwards) instead of
    one lookup per row: a third of the server's time per inserted row."""
    if conn.dialect.name != "postgresql":
        return
    from sqlalchemy.schema import DropConstraint

    present = _foreign_key_names(conn, table)
    for fk in table.foreign_key_constraints:
        if fk.name in present:
            conn.execute(DropConstraint(fk))


def add_foreign_keys(conn: Connection, tables: Sequence[Table]) -> list[str]:
    """Re-create (and so validate) the foreign keys of ``tables`` that are
    missing; the names of those added."""
    if conn.dialect.name != "postgresql":
        return []
    from sqlalchemy.schema import AddConstraint

    added = []
    for table in tables:
        present = _foreign_key_names(conn, table)
        for fk in table.foreign_key_constraints:
            if fk.name not in present:
                conn.execute(AddConstraint(fk))
                added.append(str(fk.name))
    return added


def _foreign_key_names(conn: Connection, table: Table) -> set[str]:
    from sqlalchemy import inspect

    return {str(fk["name"]) for fk in inspect(conn).get_foreign_keys(table.name)}


def missing_indexes(conn: Connection, tables: Sequence[Table]) -> list[Index]:
    """Indexes of ``tables`` that the database lacks (a first load was killed)."""
    out: list[Index] = []
    for table in tables:
        present = existing_indexes(conn, table)
        out.extend(ix for ix in secondary_indexes(table) if ix.name not in present)
    return out
