"""Background lanes of the planner: order, failures, and the same plan with or without them."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    event,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.pool import StaticPool

from engage.db import make_engine
from engage.db.bulk import all_rows, in_values, insert_ignore, update_rows
from engage.db.models import Base, Message, UTCDateTime
from engage.db.session import shared_across_threads
from engage.planning import suppressions
from engage.planning.pipeline import Lane, WriteBehind
from engage.planning.planner import plan_occurrence

from .helpers import NOW, add_customer, add_interaction, make_config
from .test_planner import campaign


def test_write_behind_keeps_order_and_stays_one_job_behind() -> None:
    ran: list[int] = []

    def job(n: int) -> int:
        time.sleep(0.01)
        ran.append(n)
        return n * n

    with Lane("t-order") as lane:
        writer = WriteBehind(lane)
        for n in range(6):
            writer.submit(job, n)
            assert len(writer.results) == n  # every job but the last one is done
        assert writer.finish() == [n * n for n in range(6)]
    assert ran == list(range(6))


def test_a_failed_job_raises_in_the_caller_and_the_lane_thread_ends() -> None:
    def fail() -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), Lane("t-fail") as lane:
        writer = WriteBehind(lane)
        writer.submit(fail)
        writer.finish()
    assert not [t for t in threading.enumerate() if t.name.startswith("t-fail")]


def test_no_write_starts_after_an_earlier_one_failed() -> None:
    ran: list[str] = []

    def fail() -> None:
        time.sleep(0.05)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"), Lane("t-stop") as lane:
        writer = WriteBehind(lane)
        writer.submit(fail)
        writer.submit(ran.append, "after")
    assert ran == []


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file::memory:?cache=shared&uri=true",
        "sqlite:///file:plans?mode=memory&cache=shared&uri=true",
    ],
)
def test_in_memory_sqlite_never_runs_on_lanes(url: str) -> None:
    engine = make_engine(url)
    try:
        assert not shared_across_threads(engine)
    finally:
        engine.dispose()


def test_a_file_named_memory_is_an_ordinary_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'memory.db'}")
    try:
        assert shared_across_threads(engine)
    finally:
        engine.dispose()


def test_an_unthreaded_lane_runs_each_job_at_once() -> None:
    with Lane("t-inline", threaded=False) as lane:
        done = lane.submit(lambda: threading.current_thread().name)
        assert done.done() and done.result() == threading.current_thread().name
        failed = lane.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result()


def test_all_rows_matches_a_plain_fetch(engine: Engine) -> None:
    query: Any = union_all(
        select(literal("a").label("s"), literal(1).label("n"), literal(None).label("x")),
        select(literal("ü – 'q' \"d\""), literal(-7), literal("2026-03-01 00:00:00")),
    )
    with engine.connect() as conn:
        plain = [tuple(r) for r in conn.execute(query)]
        assert sorted(all_rows(conn, query), key=str) == sorted(plain, key=str)
        assert all_rows(conn, select(literal(1)).where(literal(1) == 2)) == []


def test_in_values_is_one_cached_statement_whatever_the_list(engine: Engine) -> None:
    """The list is a bound parameter: the statement compiles once, and each
    execution sees its own list (a cache that kept the first list would not)."""
    meta = MetaData()
    t = Table(
        "iv",
        meta,
        Column("k", String, primary_key=True),
        Column("n", Integer),
        Column("short", String(7)),
        Column("at", UTCDateTime()),
    )
    meta.create_all(engine)
    keys = ["a", "b", "ü – 'q'", 'd"q', "e,f", "7", "b\\s", "{x}", "NULL", " sp ", ""]
    with engine.begin() as conn:
        conn.execute(
            t.insert(),
            [
                {"k": k, "n": i, "short": k[:7], "at": NOW + timedelta(seconds=i - 2)}
                for i, k in enumerate(keys)
            ],
        )
    compiled: dict[Any, Any] = {}  # SQLAlchemy's public compiled_cache option
    with engine.connect().execution_options(compiled_cache=compiled) as conn:

        def pick(values: list[Any], column: Any = t.c.k) -> list[str]:
            result = conn.execute(select(t.c.k).where(in_values(column, values)).order_by(t.c.n))
            return [r[0] for r in result]

        assert pick(["a", "b"]) == ["a", "b"]
        assert pick(["ü – 'q'", 'd"q', "e,f", "missing"]) == ["ü – 'q'", 'd"q', "e,f"]
        assert pick([]) == []
        # what an array literal or a JSON text would have to escape
        tricky = ["b\\s", "{x}", "NULL", " sp ", ""]
        assert pick(tricky + ["b\\", "{x", "null", "sp"]) == tricky
        key = StrEnum("Key", {"B": "b"})
        assert pick([key.B, "a"]) == ["a", "b"]  # a str subclass binds its value
        assert len(compiled) == 1  # five lists, one compiled statement
        assert pick([5, 1], t.c.n) == ["b", "7"]
        assert pick([3], t.c.n) == ['d"q']
        assert len(compiled) == 2
        # values keep their column type: no cut to a VARCHAR(n), instants bound as stored
        assert pick(["ü – 'q'x"], t.c.short) == []
        assert pick(["ü – 'q'"], t.c.short) == ["ü – 'q'"]
        assert pick([NOW + timedelta(seconds=3)], t.c.at) == ["7"]
        assert "IN" in str(select(t.c.k).where(in_values(t.c.k, ["a"])))  # printable


def test_update_rows_sets_each_rows_values_where_the_keys_and_guard_hold(engine: Engine) -> None:
    meta = MetaData()
    t = Table(
        "ur",
        meta,
        Column("id", Integer, primary_key=True),
        Column("token", String),
        Column("owner", String),
        Column("note", String),
        Column("at", UTCDateTime()),
    )
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            t.insert(),
            [{"id": i, "token": f"t{i}", "owner": "me" if i < 4 else "other"} for i in range(6)],
        )
    when = NOW + timedelta(hours=1)
    rows = [
        {"id": 0, "token": "t0", "note": "ü – 'q' \"\\", "at": when},
        {"id": 1, "token": "t1", "note": None, "at": None},
        {"id": 2, "token": "stale", "note": "no", "at": when},  # its key does not match
        {"id": 4, "token": "t4", "note": "not ours", "at": when},  # the guard refuses it
        {"id": 9, "token": "t9", "note": "missing", "at": when},
    ]
    mine = [t.c.owner == "me"]
    with engine.begin() as conn:
        assert update_rows(conn, t, rows, keys=["id", "token"], values={"owner": None}, where=mine) == 2
        assert update_rows(conn, t, [{"id": 2, "note": "one"}], keys=["id"], where=mine) == 1
        # a naive instant is UTC, as UTCDateTime binds it, whatever the session's zone
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
        naive = [{"id": 3, "at": when.replace(tzinfo=None)}, {"id": 5, "at": when}]
        assert update_rows(conn, t, naive, keys=["id"]) == 2
        assert update_rows(conn, t, [], keys=["id"]) == 0
        got = {r.id: (r.owner, r.note, r.at) for r in conn.execute(select(t))}
    assert got == {
        0: (None, "ü – 'q' \"\\", when),
        1: (None, None, None),
        2: ("me", "one", None),
        3: ("me", None, when),
        4: ("other", None, None),
        5: ("other", None, when),
    }


def test_sqlite_bulk_insert_keeps_values_json_would_change(sqlite_engine: Engine) -> None:
    """NUL, lone surrogates, 64-bit overflow and non-finite floats take the
    plain parameter path; everything else goes through one JSON array."""
    meta = MetaData()
    t = Table(
        "odd",
        meta,
        Column("k", String, primary_key=True),
        Column("s", String),
        Column("n", Integer),
        Column("f", Float),
    )
    meta.create_all(sqlite_engine)
    batches = [
        [  # one JSON array
            {"k": "plain", "s": 'ü – "q" \\', "n": 2**53, "f": 0.1},
            {"k": "plain2", "s": None, "n": -1, "f": None},
        ],
        # The others take plain parameters. (Two rows each: a column with one
        # value in every row is bound as a parameter anyway.)
        [{"k": "nul", "s": "a\x00b", "n": 1, "f": 1.5}, {"k": "nul2", "s": "", "n": 0, "f": 0.0}],
        [
            {"k": "big", "s": "w", "n": 2**63 - 1, "f": 2.0},
            {"k": "big2", "s": "y", "n": 0, "f": 0.0},
        ],
        [
            {"k": "inf", "s": "x", "n": 2, "f": float("inf")},
            {"k": "inf2", "s": "z", "n": 3, "f": 0.0},
        ],
    ]
    with sqlite_engine.begin() as conn:
        for rows in batches:
            assert insert_ignore(conn, t, rows, ["k"]) == len(rows)
        assert insert_ignore(conn, t, [r for b in batches for r in b], ["k"]) == 0
        got = {r.k: (r.s, r.n, r.f) for r in conn.execute(select(t))}
        # update_rows takes the same care
        changed = [{"k": "plain", "s": "c\x00d", "n": 2**63 - 1}, {"k": "plain2", "s": "e", "n": 5}]
        assert update_rows(conn, t, changed, keys=["k"], where=[t.c.f == 0.1]) == 1  # plain2: NULL
        assert conn.execute(select(t.c.s, t.c.n).where(t.c.k == "plain")).one() == (
            "c\x00d",
            2**63 - 1,
        )
    with pytest.raises(UnicodeEncodeError), sqlite_engine.begin() as conn:  # refused, not mangled
        insert_ignore(conn, t, [{"k": "s1", "s": "\udc80"}, {"k": "s2", "s": "v"}], ["k"])
    assert got == {
        "plain": ('ü – "q" \\', 2**53, 0.1),
        "plain2": (None, -1, None),
        "nul": ("a\x00b", 1, 1.5),
        "nul2": ("", 0, 0.0),
        "big": ("w", 2**63 - 1, 2.0),
        "big2": ("y", 0, 0.0),
        "inf": ("x", 2, float("inf")),
        "inf2": ("z", 3, 0.0),
    }


def test_a_batch_is_one_statement_even_with_long_digit_runs_in_text(engine: Engine) -> None:
    """Long runs of digits inside text (ids, phone numbers) are ordinary values:
    the batch stays one statement, never a statement per row."""
    meta = MetaData()
    t = Table("digits", meta, Column("k", String, primary_key=True), Column("n", Integer))
    meta.create_all(engine)
    rows = [{"k": f"{i:025d}", "n": i} for i in range(300)]
    executed: list[bool] = []

    def seen(conn: Any, cursor: Any, statement: Any, params: Any, context: Any, many: bool) -> None:
        executed.append(many)

    event.listen(engine, "before_cursor_execute", seen)
    try:
        with engine.begin() as conn:
            assert insert_ignore(conn, t, rows, ["k"]) == 300
            bumped = [{"k": r["k"], "n": r["n"] + 1} for r in rows]
            assert update_rows(conn, t, bumped, keys=["k"]) == 300
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert executed == [False, False]  # two statements, neither an executemany
    with engine.connect() as conn:
        assert conn.execute(select(t.c.n).where(t.c.k == f"{7:025d}")).scalar_one() == 8


def _shop(engine: Engine) -> None:
    """Customers that take every branch of the rules, in many small batches."""
    Base.metadata.create_all(engine)
    for n in range(40):
        cid = f"c{n:02d}"
        sms = n % 3 == 0
        add_customer(engine, cid, phone=f"+1202555{n:04d}" if sms else None, sms_opt_in=sms)
        if n % 7 == 0:
            add_interaction(engine, cid, NOW - timedelta(days=2))  # active: not in the audience
    suppressions.add(engine, [("email", "c05@example.com", None, "unsubscribe", "test")])
    suppressions.add(engine, [("email", "c09@example.com", "c09", "unsubscribe", "test")])


def _plan(engine: Engine, tmp_path: Path) -> list[tuple[Any, ...]]:
    config = make_config(tmp_path, frequency_cap={"max_messages": 1, "per": "7d"})
    low = campaign(name="low", priority=10, send_window={"start": "18:00", "end": "20:00"})
    plan_occurrence(engine, config, low, NOW, now=NOW, batch=3)
    high = campaign(name="high", priority=90, holdout="20%")
    plan_occurrence(engine, config, high, NOW, now=NOW, batch=4)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Message.campaign,
                Message.customer_id,
                Message.channel,
                Message.status,
                Message.send_after,
                Message.error,
            ).order_by(Message.campaign, Message.customer_id)
        )
        return [tuple(r) for r in rows]


def test_planning_on_lanes_plans_what_planning_in_line_plans(tmp_path: Path) -> None:
    threaded = make_engine(f"sqlite:///{tmp_path / 'lanes.db'}")
    inline = make_engine(
        f"sqlite:///{tmp_path / 'inline.db'}",
        poolclass=StaticPool,
        connect_args={"check_same_thread": False},
    )
    assert shared_across_threads(threaded) and not shared_across_threads(inline)
    for eng in (threaded, inline):
        _shop(eng)
    try:
        planned = _plan(threaded, tmp_path)
        assert planned == _plan(inline, tmp_path)
        statuses = {status for _, _, _, status, _, _ in planned}
        assert {"planned", "cancelled", "held_out"} <= statuses  # every path was taken
    finally:
        threaded.dispose()
        inline.dispose()


def test_in_values_binds_a_postgresql_array_not_a_text_to_cast(engine: Engine) -> None:
    """The array literal travels untyped, so PostgreSQL types the parameter as
    the array when the statement is prepared: plans see an array parameter,
    as for a list. Typed as text (SQLAlchemy's "::VARCHAR"), it was cast at
    run time and the history query took 20 s a round."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's prepared statements")
    meta = MetaData()
    t = Table("ivp", meta, Column("k", String, primary_key=True), Column("n", Integer))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"k": f"k{i}", "n": i} for i in range(10)])
        for column_, values in ((t.c.k, ["k1", 'k"2']), (t.c.n, [3, 4])):
            query = select(t.c.k).where(in_values(column_, values))
            sql = str(query.compile(dialect=engine.dialect)).replace("%(param_1)s", "$1")
            conn.exec_driver_sql(f"PREPARE ivp_q AS {sql}")
            types = conn.exec_driver_sql(
                "SELECT parameter_types::text FROM pg_prepared_statements WHERE name = 'ivp_q'"
            ).scalar_one()
            conn.exec_driver_sql("DEALLOCATE ivp_q")
            assert types in ("{\"character varying[]\"}", "{integer[]}"), types
