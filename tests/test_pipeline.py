"""Background lanes of the planner: order, failures, and the same plan with or without them."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, literal, select, union_all
from sqlalchemy.pool import StaticPool

from engage import suppressions
from engage.db import make_engine
from engage.db.bulk import all_rows
from engage.db.models import Base, Message
from engage.db.session import shared_across_threads
from engage.pipeline import Lane, WriteBehind
from engage.planner import plan_occurrence

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
