"""The import loop: read -> validate -> write, one batch per transaction.

Shared by ``engage import`` (files) and the HTTP ingest API (JSON items):
both hand over ``(line, values)`` pairs and get back an ``ImportResult`` with
located per-row problems. A bad row never stops the good ones; if the
database itself refuses a batch (a constraint we did not foresee, a
concurrent writer), the batch is retried row by row so only the guilty row
is rejected.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from ..config import Config
from ..errors import EngageError, Problem
from ..timeutil import utcnow
from .fields import (
    COLUMNS,
    KINDS,
    Record,
    RowInvalid,
    normalize_keys,
    parse_customer,
    parse_interaction,
    parse_points,
)
from .points import write_points
from .sources import SourceRow, infer_format, open_input, open_rejects, open_source
from .store import INSERTED, UNCHANGED, UPDATED, Outcome, write_customers, write_interactions

ERRORS_KEPT = 1000  # problems kept in memory; the rejects file gets every one

RejectSink = Callable[[SourceRow, Problem], None]
Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)
Writer = Callable[[Connection, Sequence[Any], datetime], list[Outcome]]


@dataclass
class ImportResult:
    """What one import did. ``read == inserted + updated + unchanged + rejected``."""

    kind: str
    source: str
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    errors: list[Problem] = field(default_factory=list)  # the first ERRORS_KEPT
    elapsed: float = 0.0  # seconds

    @property
    def imported(self) -> int:
        return self.inserted + self.updated

    @property
    def rate(self) -> float:
        """Rows read per second."""
        return self.read / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.kind}: {self.read:,} read, {self.imported:,} imported"
            f" ({self.inserted:,} new, {self.updated:,} updated), {self.unchanged:,} unchanged,"
            f" {self.rejected:,} rejected in {self.elapsed:.1f}s ({self.rate:,.0f} rows/s)"
        )

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
        }


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise EngageError(f"unknown import kind {kind!r}: use {', '.join(KINDS)}")


def _parser(kind: str, config: Config, keys_normalized: bool) -> Callable[[dict[str, Any]], Record]:
    known = COLUMNS[kind]
    if kind == "customers":
        region = config.default_phone_region
        parse_one: Callable[[dict[str, Any]], Record] = lambda d: parse_customer(d, region)  # noqa: E731
    elif kind == "interactions":
        parse_one = parse_interaction
    else:
        parse_one = parse_points
    if keys_normalized:  # a CSV header was matched once, not per row
        return parse_one
    return lambda data: parse_one(normalize_keys(data, known))


_WRITERS: dict[str, Writer] = {
    "customers": write_customers,  # type: ignore[dict-item]
    "interactions": write_interactions,  # type: ignore[dict-item]
    "points": write_points,  # type: ignore[dict-item]
}


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
        after_batch: Callable[[], None] | None = None,
        keys_normalized: bool = False,
        bulk: bool = False,
    ):
        _check_kind(kind)
        self.engine = engine
        self.bulk = bulk
        self.parse = _parser(kind, config, keys_normalized)
        self.writer = _WRITERS[kind]
        self.now = now or utcnow()
        self.on_reject = on_reject
        self.batch_size = batch_size or config.import_batch_size
        self.after_batch = after_batch
        self.result = ImportResult(kind, source)

    def run(self, rows: Iterable[SourceRow]) -> ImportResult:
        started = time.perf_counter()
        try:
            with self.engine.connect() as self.conn, _bulk_cache(self.conn, self.bulk):
                self._loop(rows)
        except DBAPIError as exc:
            raise EngageError(
                f"{self.result.source}: database error after {self.result.read:,} rows"
                f" (those are saved): {_first_line(exc.orig)}"
            ) from None
        except (OSError, EOFError, zlib.error) as exc:
            raise EngageError(
                f"{self.result.source}: read error after {self.result.read:,} rows"
                f" (those are saved): {exc}"
            ) from None
        finally:
            self.result.elapsed = time.perf_counter() - started
        return self.result

    def _loop(self, rows: Iterable[SourceRow]) -> None:
        batch: list[SourceRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= self.batch_size:
                self._batch(batch)
                batch = []
        if batch:
            self._batch(batch)

    def _batch(self, batch: list[SourceRow]) -> None:
        failures: list[tuple[SourceRow, RowInvalid]] = []
        rows: list[SourceRow] = []
        records: list[Record] = []
        for row in batch:
            if row.error is not None:
                failures.append((row, row.error))
                continue
            try:
                records.append(self.parse(row.data))
            except RowInvalid as exc:
                failures.append((row, exc))
                continue
            rows.append(row)
        outcomes = self._write(records) if records else []
        res = self.result
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome == INSERTED:
                res.inserted += 1
            elif outcome == UPDATED:
                res.updated += 1
            elif outcome == UNCHANGED:
                res.unchanged += 1
            else:
                assert isinstance(outcome, RowInvalid)
                failures.append((row, outcome))
        res.read += len(batch)
        failures.sort(key=lambda f: f[0].line)
        for row, why in failures:
            problem = Problem(res.source, row.line, None, why.field, why.why)
            res.rejected += 1
            if len(res.errors) < ERRORS_KEPT:
                res.errors.append(problem)
            if self.on_reject is not None:
                self.on_reject(row, problem)
        if self.after_batch is not None:
            self.after_batch()

    def _write(self, records: list[Record]) -> list[Outcome]:
        try:
            with self.conn.begin():
                return self.writer(self.conn, records, self.now)
        except (IntegrityError, DataError) as exc:
            if len(records) == 1:
                return [RowInvalid("database", _first_line(exc.orig))]
            return [out for rec in records for out in self._write([rec])]


@contextmanager
def _bulk_cache(conn: Connection, bulk: bool) -> Iterator[None]:
    """For a file import on SQLite, a 64 MB page cache while it runs: index
    pages stay in memory instead of being re-read for every batch (~25% faster
    at 500k rows). Restored afterwards, since the connection goes back to a pool."""
    if not bulk or conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql("PRAGMA cache_size=-65536")
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        conn.exec_driver_sql(f"PRAGMA cache_size={int(before or -2000)}")
        conn.commit()


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
    "not given". Problems are located as ``source:line``.
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
) -> ImportResult:
    """Stream a CSV or JSONL file (``-`` = stdin, ``.gz`` ok) into the database.

    Raises EngageError before writing anything for a missing file, an unknown
    kind or format, or a CSV header without the required columns.
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
        after = None
        if progress is not None:
            report, total, position = progress, inp.size, inp.position
            after = lambda: report(position(), total)  # noqa: E731
        importer = _Importer(
            engine,
            config,
            kind,
            source=inp.name,
            now=now,
            on_reject=sink,
            batch_size=batch_size,
            after_batch=after,
            keys_normalized=fmt == "csv",
            bulk=True,
        )
        return importer.run(source)
