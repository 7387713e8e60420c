"""The import loop: read -> validate -> write, one batch per transaction.

Shared by ``engage import`` (files) and the HTTP ingest API (JSON items):
both hand over ``(line, values)`` pairs and get back an ``ImportResult`` with
located per-row problems. A bad row never stops the good ones; if the
database itself refuses a batch (a constraint we did not foresee, a
concurrent writer), the batch is retried row by row so only the guilty row
is rejected. Every batch keeps ``customer_facts`` current in its own
transaction (``store.FactsUpkeep``). An interrupted import loses at most the
batch in flight, and running it again is safe: imported rows are unchanged.
"""

from __future__ import annotations

import gc
import logging
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from ..config import Config
from ..customers.facts import rule_of
from ..db.facts import facts_paused
from ..errors import EngageError, Problem
from ..timeutil import utcnow
from .fields import (
    KINDS,
    LINE_BREAK,
    Record,
    RowInvalid,
    RowParser,
    RowWarning,
    normalize_keys,
)
from .loading import Loading
from .points import write_points
from .sources import (
    CsvSource,
    SourceRow,
    infer_format,
    open_input,
    open_rejects,
    open_source,
)
from .store import (
    INSERTED,
    UNCHANGED,
    UPDATED,
    FactsUpkeep,
    Outcome,
    write_customers,
    write_interactions,
)

ERRORS_KEPT = 1000  # problems (and warnings) kept in memory; the rejects file gets every one
FILE_BATCH = 10_000  # rows per transaction for files (config import_batch_size when larger)
LOG_EVERY = 10.0  # seconds between import_progress log lines

log = logging.getLogger(__name__)

RejectSink = Callable[[SourceRow, Problem], None]
Writer = Callable[[Connection, Sequence[Any], datetime, FactsUpkeep], list[Outcome]]


@dataclass(frozen=True)
class ImportProgress:
    """Where a file import is, after each batch."""

    kind: str
    rows: int  # read so far
    bytes_done: int
    bytes_total: int | None  # None for stdin
    elapsed: float

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float | None:
        if not self.bytes_total:
            return None
        return min(1.0, self.bytes_done / self.bytes_total)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the share of the file read so far."""
        share = self.fraction
        if share is None or share <= 0:
            return None
        return self.elapsed * (1 - share) / share


Progress = Callable[[ImportProgress], None]


@dataclass
class ImportResult:
    """What one import did. ``read == inserted + updated + unchanged + rejected``.

    ``warnings`` are problems of rows that were imported anyway (a phone
    number dropped, an interaction dated in the future); ``warning_counts``
    counts them by kind (``phone_dropped``, ``future_dated``).
    """

    kind: str
    source: str
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[Problem] = field(default_factory=list)  # the first ERRORS_KEPT
    warnings: list[Problem] = field(default_factory=list)  # the first ERRORS_KEPT
    warning_counts: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0  # seconds
    interrupted: bool = False

    @property
    def imported(self) -> int:
        return self.inserted + self.updated

    @property
    def rate(self) -> float:
        """Rows read per second."""
        return self.read / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"{self.kind}: {self.read:,} read, {self.imported:,} imported"
            f" ({self.inserted:,} new, {self.updated:,} updated), {self.unchanged:,} unchanged,"
            f" {self.rejected:,} rejected in {self.elapsed:.1f}s ({self.rate:,.0f} rows/s)"
        )
        if self.warning_counts:
            parts = ", ".join(
                f"{n:,} {_WARNING_NAMES.get(k, k)}" for k, n in sorted(self.warning_counts.items())
            )
            text += f"; warnings: {parts}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "read": self.read,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "elapsed": round(self.elapsed, 3),
            "rows_per_second": round(self.rate, 1),
            "errors": [str(p) for p in self.errors],
            "warnings": [str(p) for p in self.warnings],
            "warning_counts": dict(self.warning_counts),
            "interrupted": self.interrupted,
        }


_WARNING_NAMES = {
    "phone_dropped": "phone numbers dropped",
    "future_dated": "dated in the future",
}


class ImportInterrupted(EngageError):
    """Ctrl-C (or SIGTERM) during an import: ``result`` says what was committed."""

    def __init__(self, result: ImportResult) -> None:
        self.result = result
        super().__init__(
            f"{result.source}: interrupted after {result.read:,} rows: {result.imported:,}"
            f" imported ({result.inserted:,} new, {result.updated:,} updated),"
            f" {result.unchanged:,} unchanged, {result.rejected:,} rejected are committed;"
            " the batch in flight was rolled back. Running the same import again is safe:"
            " rows already imported count as unchanged."
        )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise EngageError(f"unknown import kind {kind!r}: use {', '.join(KINDS)}")


_WRITERS: dict[str, Writer] = {
    "customers": write_customers,  # type: ignore[dict-item]
    "interactions": write_interactions,  # type: ignore[dict-item]
    "points": write_points,  # type: ignore[dict-item]
}


@dataclass
class _Parsed:
    """One batch as read and parsed: what to write, what already failed."""

    batch: list[SourceRow]
    rows: list[SourceRow] = field(default_factory=list)  # those with a record
    records: list[Record] = field(default_factory=list)
    failures: list[tuple[SourceRow, RowInvalid]] = field(default_factory=list)


def _batches(rows: Iterable[SourceRow], size: int) -> Iterator[list[SourceRow]]:
    batch: list[SourceRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Importer:
    def __init__(
        self,
        engine: Engine,
        config: Config,
        kind: str,
        *,
        source: str,
        now: datetime | None,
        on_reject: RejectSink | None,
        batch_size: int | None,
        progress: Callable[[int], None] | None = None,
        columns: list[str] | None = None,
        keys_normalized: bool = False,
        bulk: bool = False,
        phone_helper: bool = False,
    ):
        _check_kind(kind)
        self.engine = engine
        self.config = config
        self.kind = kind
        self.bulk = bulk
        self.now = now or utcnow()
        self.parser = RowParser(
            kind,
            default_region=config.default_phone_region,
            now=self.now,
            columns=columns,
            phone_helper=phone_helper,
        )
        self.keys_normalized = keys_normalized
        self.writer = _WRITERS[kind]
        self.on_reject = on_reject
        self.batch_size = batch_size or (
            max(FILE_BATCH, config.import_batch_size) if bulk else config.import_batch_size
        )
        self.progress = progress
        self.result = ImportResult(kind, source)
        self.upkeep = FactsUpkeep(rule_of(config), "triggers")  # replaced in run()

    def run(self, rows: Iterable[SourceRow]) -> ImportResult:
        started = time.perf_counter()
        res = self.result
        try:
            with self.engine.connect() as self.conn, _bulk_cache(self.conn, self.bulk):
                loading = Loading(self.conn, self.kind, self.now, bulk=self.bulk)
                try:
                    self.upkeep = loading.start()
                    self._loop(rows)
                except KeyboardInterrupt:
                    res.interrupted = True
                finally:
                    if self.conn.in_transaction():
                        self.conn.rollback()
                    loading.finish()
        except DBAPIError as exc:
            raise EngageError(
                f"{res.source}: database error after {res.read:,} rows"
                f" (those are saved): {_first_line(exc.orig)}"
            ) from None
        except (OSError, EOFError, zlib.error) as exc:
            raise EngageError(
                f"{res.source}: read error after {res.read:,} rows (those are saved): {exc}"
            ) from None
        finally:
            res.elapsed = time.perf_counter() - started
        if res.interrupted:
            raise ImportInterrupted(res)
        return res

    def _loop(self, rows: Iterable[SourceRow]) -> None:
        """Parse batch N+1 while batch N is written, on PostgreSQL (the server
        does the writing, on another core); one after the other on SQLite,
        whose writing is this process's own work (and a writer thread there
        would wait out the GIL's switch interval after every statement)."""
        pipelined = self.bulk and self.conn.dialect.name == "postgresql"
        known, normalize = self.parser.known, not self.keys_normalized
        with ThreadPoolExecutor(1, thread_name_prefix="engage-import") as pool:
            waiting: _Parsed | None = None  # parsed, not written yet (SQLite)
            in_flight: tuple[_Parsed, Future[list[Outcome]]] | None = None
            try:
                for batch in _batches(rows, self.batch_size):
                    if normalize:
                        for row in batch:
                            if row.error is None:
                                row.data = normalize_keys(row.data, known)
                    # Phones go to the helper first, then the previous batch is
                    # written while the helper validates them.
                    self.parser.prefetch([row.data for row in batch if row.error is None])
                    if waiting is not None:
                        self._account(waiting, self._write(waiting.records))
                        waiting = None
                    parsed = self._parse(batch)
                    if not pipelined:
                        waiting = parsed
                        continue
                    if in_flight is not None:
                        self._account(in_flight[0], in_flight[1].result())
                        in_flight = None
                    in_flight = (parsed, pool.submit(self._write, parsed.records))
            finally:  # also on Ctrl-C: the batch in flight commits or not, and is counted
                if in_flight is not None:
                    self._account(in_flight[0], in_flight[1].result())
                self.parser.close()
            if waiting is not None:
                self._account(waiting, self._write(waiting.records))

    def _parse(self, batch: list[SourceRow]) -> _Parsed:
        parsed = _Parsed(batch)
        parse = self.parser.parse
        if self.parser.untyped:
            self.parser.learn([row.data for row in batch if row.error is None])
        for row in batch:
            if row.error is not None:
                parsed.failures.append((row, row.error))
                continue
            try:
                parsed.records.append(parse(row.data))
            except RowInvalid as exc:
                parsed.failures.append((row, exc))
                continue
            parsed.rows.append(row)
        return parsed

    def _account(self, parsed: _Parsed, outcomes: list[Outcome]) -> None:
        """Count a written batch, report its rejected rows and warnings."""
        res = self.result
        failures = parsed.failures
        for row, rec, outcome in zip(parsed.rows, parsed.records, outcomes, strict=True):
            if outcome == INSERTED:
                res.inserted += 1
            elif outcome == UPDATED:
                res.updated += 1
            elif outcome == UNCHANGED:
                res.unchanged += 1
            else:
                assert isinstance(outcome, RowInvalid)
                failures.append((row, outcome))
                continue
            if rec.warnings:
                self._warn(row, rec.warnings)
        res.read += len(parsed.batch)
        failures.sort(key=lambda f: f[0].line)
        for row, why in failures:
            problem = Problem(res.source, row.line, None, why.field, _explained(why, row))
            res.rejected += 1
            if len(res.errors) < ERRORS_KEPT:
                res.errors.append(problem)
            if self.on_reject is not None:
                self.on_reject(row, problem)
        if self.progress is not None:
            self.progress(res.read)

    def _warn(self, row: SourceRow, warnings: tuple[RowWarning, ...]) -> None:
        res = self.result
        for w in warnings:
            res.warning_counts[w.kind] += 1
            if len(res.warnings) < ERRORS_KEPT:
                res.warnings.append(
                    Problem(res.source, row.line, None, w.field, w.why, severity="warning")
                )

    def _write(self, records: list[Record]) -> list[Outcome]:
        conn = self.conn
        try:
            with conn.begin(), _paused(conn, self.upkeep):
                return self.writer(conn, records, self.now, self.upkeep)
        except (IntegrityError, DataError) as exc:
            if len(records) == 1:
                return [RowInvalid("database", _first_line(exc.orig))]
            return [out for rec in records for out in self._write([rec])]


@contextmanager
def _paused(conn: Connection, upkeep: FactsUpkeep) -> Iterator[None]:
    if not upkeep.paused:
        yield
        return
    with facts_paused(conn):
        yield


def _explained(why: RowInvalid, row: SourceRow) -> str:
    """The reason, with where a CSV quote spanning lines opened when that is
    what put a line break into a value that cannot hold one."""
    if why.why == LINE_BREAK and row.quote_line is not None:
        return (
            f"{LINE_BREAK}: the quote opened on line {row.quote_line} runs to line"
            f" {row.end_line}; is it closed where it should be?"
        )
    return why.why


@contextmanager
def _bulk_cache(conn: Connection, bulk: bool) -> Iterator[None]:
    """For a file import on SQLite, a 32 MB page cache while it runs: index
    pages stay in memory instead of being re-read for every batch. (64 MB was
    ~25% faster at 500k rows with the indexes kept; first loads now build
    them at the end, and the cache counts towards the import's 200 MB.)
    Restored afterwards, since the connection goes back to a pool."""
    if not bulk or conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql("PRAGMA cache_size=-32768")
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        conn.exec_driver_sql(f"PRAGMA cache_size={int(before or -2000)}")
        conn.commit()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A file import allocates millions of short-lived, acyclic objects (cells,
    rows, records) that reference counting frees; the cycle collector's
    default pace (every 700 allocations, scanning the batch in memory each
    time) cost a third of parsing. Its pace is relaxed for the import."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], 100_000), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _first_line(exc: BaseException | None) -> str:
    return (str(exc) or type(exc).__name__).strip().splitlines()[0] if exc else "unknown error"


def import_rows(
    engine: Engine,
    config: Config,
    kind: str,
    rows: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    source: str = "<input>",
    now: datetime | None = None,
    on_reject: RejectSink | None = None,
    batch_size: int | None = None,
) -> ImportResult:
    """Import already-decoded rows: ``(line or item number, {column: value})``.

    Values may be strings (CSV cells) or JSON values; empty/``None`` means
    "not given". Problems (and warnings) are located as ``source:line``.
    """
    importer = _Importer(
        engine, config, kind, source=source, now=now, on_reject=on_reject, batch_size=batch_size
    )
    return importer.run(_source_row(line, data) for line, data in rows)


def _source_row(line: int, data: Any) -> SourceRow:
    if isinstance(data, Mapping):
        return SourceRow(line, dict(data), dict(data))
    why = RowInvalid("json", f"expected a JSON object, got {type(data).__name__}")
    return SourceRow(line, {}, data, why)


def import_file(
    engine: Engine,
    config: Config,
    kind: str,
    path: str,
    *,
    fmt: str | None = None,
    rejects: str | PathLike[str] | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
    phone_helper: bool = False,
) -> ImportResult:
    """Stream a CSV or JSONL file (``-`` = stdin, ``.gz`` ok) into the database.

    Raises EngageError before writing anything for a missing file, an unknown
    kind or format, or a CSV header without the required columns; raises
    ``ImportInterrupted`` (with the committed counts) on Ctrl-C.

    ``phone_helper``: let a big customer file have its phone numbers
    validated by a helper process on another core (``engage.ingest.phones``;
    ``engage import`` does). The helper is started with ``spawn``, which
    imports the caller's main module again: only from a script whose work
    is under ``if __name__ == "__main__":``.
    """
    _check_kind(kind)
    fmt = infer_format(path, fmt)
    if rejects is not None and path != "-" and Path(rejects).resolve() == Path(path).resolve():
        raise EngageError(f"{path}: the rejects file must not be the input file")
    with open_input(path) as inp, ExitStack() as stack:
        source = open_source(inp, fmt, kind)
        sink = None
        if rejects is not None:
            sink = stack.enter_context(open_rejects(rejects, source)).write
        total, position, started = inp.size, inp.position, time.monotonic()
        logged = [started]

        def report(rows: int) -> None:
            now_s = time.monotonic()
            state = ImportProgress(kind, rows, position(), total, now_s - started)
            if progress is not None:
                progress(state)
            if now_s - logged[0] >= LOG_EVERY:
                logged[0] = now_s
                _log_progress(state)

        importer = _Importer(
            engine,
            config,
            kind,
            source=inp.name,
            now=now,
            on_reject=sink,
            batch_size=batch_size,
            progress=report,
            columns=source.columns if isinstance(source, CsvSource) else None,
            keys_normalized=fmt == "csv",
            bulk=True,
            phone_helper=phone_helper,
        )
        with _fewer_collections():
            result = importer.run(source)
    log.info(
        "import done",
        extra={
            "event": "import_done",
            **{k: v for k, v in result.to_dict().items() if k not in ("errors", "warnings")},
        },
    )
    return result


def _log_progress(p: ImportProgress) -> None:
    fraction, eta = p.fraction, p.eta
    log.info(
        "import progress",
        extra={
            "event": "import_progress",
            "kind": p.kind,
            "rows": p.rows,
            "rows_per_second": round(p.rate),
            "percent": None if fraction is None else round(100 * fraction, 1),
            "eta_s": None if eta is None else round(eta),
        },
    )
