"""Overlap a batch job's database work with its Python work, on a second thread.

The planner's reads and writes are mostly waits for the database (psycopg
waits for the server without the GIL, SQLite runs a statement without it);
its decisions are Python work. A ``Lane`` runs the database work of one batch
on a background thread while the caller works on another, in order, so the
results are those of the plain loop.

A lane's jobs should release the GIL for long stretches, not often: a thread
that takes the GIL back while another thread computes waits up to the
interpreter's switch interval (5 ms) for it. A statement that streams its
rows one driver call at a time (SQLite's cursor) pays that per row; one that
returns everything in one call (see ``db.bulk.all_rows``) pays it once.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class Lane:
    """Jobs run in submission order on one background thread.

    Use as a context manager: leaving it drops jobs not yet started and waits
    for the running one, so nothing of the lane outlives the block.
    ``threaded=False`` runs each job inside ``submit`` (for a database other
    threads cannot reach, such as in-memory SQLite); the future is then
    already done.
    """

    def __init__(self, name: str, *, threaded: bool = True):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name) if threaded else None

    def submit(self, job: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(job, *args)
        done: Future[T] = Future()
        try:
            done.set_result(job(*args))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def __enter__(self) -> Lane:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class WriteBehind:
    """Write jobs on a lane, one at a time: ``submit`` first waits for the
    previous job, so a job never starts after an earlier one failed (the
    failure raises in that ``submit`` or in ``finish``). Every job's result
    is in ``results``, in order."""

    def __init__(self, lane: Lane):
        self._lane = lane
        self._running: Future[Any] | None = None
        self.results: list[Any] = []

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        self.finish()
        self._running = self._lane.submit(job, *args)

    def finish(self) -> list[Any]:
        if self._running is not None:
            running, self._running = self._running, None
            self.results.append(running.result())
        return self.results
