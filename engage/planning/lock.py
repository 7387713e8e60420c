"""One planner at a time per database.

Planning reads what was planned before (reentry, the frequency cap across
campaigns, preemption) and then writes, in separate transactions and in
batches. Two planners at once would each miss the other's uncommitted rows:
two occurrences of a campaign could both message everyone, and two campaigns
could both take a customer's last frequency-cap slot. So every
``plan_occurrence`` holds this lock, whoever calls it (the daemon's cron jobs
and catch-up, ``engage send``, any number of processes on any number of
machines); whoever comes second waits, then sees everything the first one
wrote.

It is one lock, not one per campaign or per customer: a per-campaign lock
cannot protect the cap, which is shared across campaigns, and a per-customer
lock would be thousands of locks per batch. Within a process, planning was
already one occurrence at a time; across processes, sending is what scales
out, and planning 100,000 messages takes seconds.

PostgreSQL: a transaction-level advisory lock on a connection held for the
whole planning (released by its transaction's end, or by the connection dying
with the process, so it never leaks into the pool). SQLite: an exclusive
``flock`` on ``<database>.plan.lock``, released by closing it (or by the
process dying). An in-memory SQLite database lives in one process: its
planners are serialized by a lock of that engine.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

from ..db.session import in_memory_sqlite

# pg_advisory_xact_lock's key: any fixed 64-bit number that nothing else uses.
LOCK_KEY = 0x656E_6761_6765_504C  # "engagePL"

_MEMORY_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


@contextmanager
def planning_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's planning lock (waiting for it) for the ``with`` block."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
            yield
        return
    if in_memory_sqlite(engine.url) or not engine.url.database:
        with _GUARD:
            lock = _MEMORY_LOCKS.setdefault(engine, threading.Lock())
        with lock:
            yield
        return
    import fcntl

    path = Path(engine.url.database).resolve()
    with open(path.with_name(path.name + ".plan.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # closing the file releases it
        yield
