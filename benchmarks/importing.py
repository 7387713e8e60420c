"""``engage import`` from CSV, into an empty database and on top of a full one.

The files are the data set's own rows (``benchmarks.csvfiles``): at scale 1,
1,000,000 customers, ~10,000,000 interactions and ~2,000,000 point lots (plus
~250,000 redemptions). Two scratch databases are made (SQLite files in the
run's work folder; PostgreSQL schemas in the run's database, dropped
afterwards), the run's own data set is not touched:

1. ``customers``, ``interactions`` then ``points`` into the empty databases:
   engage (the installed ``engage import`` command, in its own process, so
   its peak RSS is its own) into one, the reference into the other;
2. a second file set (other customers and events, ids prefixed ``d``) on
   top of the now full databases, the same way.

The reference is the fastest way known to put the same rows into the same
tables without validating them: the CSV read with ``csv.reader``, each row
turned into the stored values with string slicing, written by
``executemany`` of a multi-row INSERT (SQLite) or ``COPY`` (PostgreSQL) in
10,000-row transactions, doing the same database work as engage: on a first
load the same deferred indexes and foreign keys built at the end and the
facts rebuilt once; on top of a full table the indexes kept, and the facts
kept current (PostgreSQL's triggers; SQLite's updated set-based per batch,
as engage does). Redemptions are inserted as rows, without FIFO allocation.
Each pair alternates which side runs first.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, make_url, text

from engage.customers.facts import rule_of
from engage.db import facts as stored
from engage.db import make_engine, upgrade
from engage.db.load import (
    add_foreign_keys,
    create_indexes,
    drop_foreign_keys,
    drop_indexes,
    load_rows,
)
from engage.db.models import Customer, Interaction, PointsLot, PointsRedemption
from engage.db.session import normalize_url
from engage.ingest.loading import FIRST_LOAD_TABLES, deferred_indexes
from engage.ingest.store import FactsUpkeep
from engage.timeutil import utcnow

from .common import Context, Result, load_avg
from .csvfiles import CsvFiles, write_csv_files

KINDS = ("customers", "interactions", "points")
TARGETS = {"customers": 20_000, "interactions": 50_000}  # rows/s, SPEC §11
MIN_RATIO = 0.5
MAX_RSS_MB = 200
BATCH = 10_000


def run(ctx: Context) -> list[Result]:
    customers = max(1, round(1_000_000 * ctx.scale))
    files = [
        write_csv_files(ctx.workdir / "import-1", customers=customers, seed=42, now=ctx.now),
        write_csv_files(
            ctx.workdir / "import-2", customers=customers, seed=43, now=ctx.now, prefix="d"
        ),
    ]
    results: list[Result] = []
    peaks: list[float] = []
    with _scratch(ctx, "engage") as engage_db, _scratch(ctx, "bare") as bare_db:
        for round_, (when, csvs) in enumerate((("into an empty database", files[0]),
                                               ("on top of the full one", files[1]))):  # fmt: skip
            for i, kind in enumerate(KINDS):
                engage_first = (round_ + i) % 2 == 0  # alternate which side runs first
                sides: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                    ("engage", partial(_engage, ctx, engage_db, kind, csvs)),
                    ("bare", partial(_bare, bare_db, kind, csvs)),
                ]
                measured = dict(
                    (name, fn()) for name, fn in (sides if engage_first else sides[::-1])
                )
                eng, bare = measured["engage"], measured["bare"]
                peaks.append(eng["peak_rss_mb"])
                results.append(_result(kind, when, csvs, eng, bare, engage_first))
    results.append(
        Result(
            name="import peak RSS (largest of the imports above)",
            figure=round(max(peaks), 1),
            unit="MB",
            reference=None,
            reference_label="",
            target=f"< {MAX_RSS_MB} MB",
            passed=max(peaks) < MAX_RSS_MB,
            details={"per_import_mb": [round(p, 1) for p in peaks]},
            load_avg=load_avg(),
        )
    )
    return results


def _result(
    kind: str,
    when: str,
    files: CsvFiles,
    eng: dict[str, Any],
    bare: dict[str, Any],
    engage_first: bool,
) -> Result:
    rate, ref = eng["rows_per_second"], bare["rows_per_second"]
    ratio = rate / ref if ref > 0 else None
    target = TARGETS.get(kind)
    passed = ratio is not None and ratio >= MIN_RATIO and (target is None or rate >= target)
    complete = eng["read"] == files.rows(kind) and eng["rejected"] == 0
    return Result(
        name=f"import {kind} {when} ({files.rows(kind):,} rows)",
        figure=round(rate),
        unit="rows/s",
        reference=round(ref),
        reference_label="bare executemany/COPY, rows/s",
        target=(f">= {target:,}/s, " if target else "") + f"ratio >= {MIN_RATIO}",
        passed=passed and complete,
        ratio=round(ratio, 2) if ratio is not None else None,
        details={
            "engage": {k: v for k, v in eng.items() if k != "errors"},
            "bare": bare,
            "engage_ran_first": engage_first,
            "all_rows_imported": complete,
        },
        load_avg=load_avg(),
    )


# -- the scratch databases -------------------------------------------------------------


class _Scratch:
    def __init__(self, url: str, workdir: Path) -> None:
        self.url = url
        self.engine: Engine = make_engine(url)
        self.config_path = workdir / f"config-{uuid.uuid4().hex[:8]}.yaml"
        self.config_path.write_text(f"database_url: {json.dumps(url)}\n", encoding="utf-8")


class _scratch:  # noqa: N801 - a context manager used like a function
    """An empty engage database beside the run's: a SQLite file in the work
    folder, or a schema of the run's PostgreSQL database (dropped after)."""

    def __init__(self, ctx: Context, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.schema: str | None = None

    def __enter__(self) -> _Scratch:
        ctx = self.ctx
        if ctx.engine.dialect.name == "postgresql":
            self.schema = f"bench_import_{self.name}_{uuid.uuid4().hex[:8]}"
            with ctx.engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            base = make_url(normalize_url(ctx.db_url))
            scratch = base.update_query_dict({"options": f"-csearch_path={self.schema}"})
            url = scratch.render_as_string(hide_password=False)
        else:
            url = f"sqlite:///{ctx.workdir / f'import-{self.name}.db'}"
        self.scratch = _Scratch(url, ctx.workdir)
        upgrade(self.scratch.engine)
        return self.scratch

    def __exit__(self, *exc: object) -> None:
        self.scratch.engine.dispose()
        if self.schema is not None:
            with self.ctx.engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))


# -- engage: the installed command, in its own process ---------------------------------


def _engage(ctx: Context, db: _Scratch, kind: str, files: CsvFiles) -> dict[str, Any]:
    exe = Path(sys.executable).parent / "engage"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "engage"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--config", str(db.config_path), "import", kind, str(files.paths[kind]),
         "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ctx.workdir,
    )  # fmt: skip
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"engage import {kind} exited {proc.returncode}")
    report = json.loads(out)
    report["wall_s"] = round(time.perf_counter() - started, 2)  # with the process start
    report["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # KiB on Linux
    return report


# -- the reference ----------------------------------------------------------------------


def _bare(db: _Scratch, kind: str, files: CsvFiles) -> dict[str, Any]:
    engine = db.engine
    table = FIRST_LOAD_TABLES[kind]
    started = time.perf_counter()
    rows = 0
    with engine.connect() as conn:
        first = _empty(conn, table)
        rule = rule_of(_config())
        now = utcnow()
        if first:
            with conn.begin():
                drop_indexes(conn, deferred_indexes(table))
                drop_foreign_keys(conn, table)
                stored.invalidate(conn, rule, now)
        mode = "rebuild" if first else "triggers" if conn.dialect.name == "postgresql" else "batch"
        upkeep = FactsUpkeep(rule, mode)
        writer = _WRITERS[kind]
        for batch in _batches(files.paths[kind], conn.dialect.name):
            with conn.begin():
                if upkeep.paused:
                    conn.exec_driver_sql(_pause_sql(conn))
                writer(conn, batch, upkeep, now)
                if upkeep.paused and conn.dialect.name == "sqlite":
                    conn.exec_driver_sql("UPDATE facts_state SET paused = 0 WHERE id = 1")
            rows += len(batch)
        if first:
            with conn.begin():
                create_indexes(conn, deferred_indexes(table))
                add_foreign_keys(conn, [table])
            with conn.begin():
                stored.rebuild(conn, rule, now)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": rows / seconds,
            "first_load": first}  # fmt: skip


def _config() -> Any:
    from engage.config import Config

    return Config()


def _pause_sql(conn: Connection) -> str:
    if conn.dialect.name == "postgresql":
        return "SET LOCAL engage.facts_paused = 'on'"
    return "UPDATE facts_state SET paused = 1 WHERE id = 1"


def _empty(conn: Connection, table: Table) -> bool:
    with conn.begin():
        return conn.exec_driver_sql(f"SELECT 1 FROM {table.name} LIMIT 1").first() is None


def _batches(path: Path, dialect: str) -> Iterator[list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[list[str]] = []
        for cells in reader:
            batch.append(cells)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def _instant(iso: str, sqlite: bool) -> str:
    """``2026-02-28T23:03:40Z`` as stored: SQLite's text form, or as PostgreSQL reads it."""
    return f"{iso[:10]} {iso[11:19]}.000000" if sqlite else iso


def _write_customers(conn: Connection, batch: list[list[str]], upkeep: FactsUpkeep,
                     now: Any) -> None:  # fmt: skip
    sqlite = conn.dialect.name == "sqlite"
    stamp = _instant(now.strftime("%Y-%m-%dT%H:%M:%SZ"), sqlite)
    flag: Callable[[str], Any] = (lambda v: int(v == "true")) if sqlite else (lambda v: v == "true")
    rows = [
        (c[0], c[1] or None, c[2] or None, c[3] or None, c[4] or None, c[5] or None,
         c[6] or None, c[7] or None, json.dumps({"country": c[11], "source": c[12]}),
         flag(c[8]), flag(c[9]), _instant(c[10], sqlite), stamp)
        for c in batch
    ]  # fmt: skip
    table: Table = Customer.__table__  # type: ignore[assignment]
    columns = ("id", "email", "phone", "first_name", "last_name", "timezone", "locale", "tier",
               "attributes", "email_opt_in", "sms_opt_in", "created_at", "updated_at")  # fmt: skip
    mark = upkeep.mark(conn, table)
    load_rows(conn, table, columns, rows, converted=True)
    upkeep.customers_written(conn, mark, [])


def _write_interactions(conn: Connection, batch: list[list[str]], upkeep: FactsUpkeep,
                        now: Any) -> None:  # fmt: skip
    sqlite = conn.dialect.name == "sqlite"
    stamp = _instant(now.strftime("%Y-%m-%dT%H:%M:%SZ"), sqlite)
    rows = []
    for c in batch:  # CSV: customer_id,kind,occurred_at,amount,score,external_id,items,...
        attrs: dict[str, Any] = {}
        if c[6]:
            attrs["items"] = int(c[6])
        if c[7]:
            attrs["campaign"] = c[7]
        if c[8]:
            attrs["topic"] = c[8]
        amount = (float(c[3]) if sqlite else c[3]) if c[3] else None
        score = int(c[4]) if c[4] else None
        rows.append(
            (c[0], c[1], _instant(c[2], sqlite), amount, score, json.dumps(attrs), c[5], stamp)
        )
    table: Table = Interaction.__table__  # type: ignore[assignment]
    columns = ("customer_id", "kind", "occurred_at", "amount", "score", "attributes",
               "external_id", "created_at")  # fmt: skip
    mark = upkeep.mark(conn, table)
    load_rows(conn, table, columns, rows, converted=True)
    upkeep.interactions_written(conn, mark, [])


def _write_points(conn: Connection, batch: list[list[str]], upkeep: FactsUpkeep,
                  now: Any) -> None:  # fmt: skip
    sqlite = conn.dialect.name == "sqlite"
    lots, redemptions = [], []
    for c in batch:
        points = int(c[1])
        if points > 0:
            earned, expires = _instant(c[2], sqlite), _instant(c[3], sqlite)
            lots.append((c[0], points, points, earned, expires, c[4]))
        else:
            redemptions.append((c[0], -points, _instant(c[2], sqlite), c[4]))
    lot_table: Table = PointsLot.__table__  # type: ignore[assignment]
    load_rows(conn, lot_table,
              ("customer_id", "points", "remaining", "earned_at", "expires_at", "external_id"),
              lots, converted=True)  # fmt: skip
    redemption_table: Table = PointsRedemption.__table__  # type: ignore[assignment]
    load_rows(conn, redemption_table, ("customer_id", "points", "redeemed_at", "external_id"),
              redemptions, converted=True)  # fmt: skip
    upkeep.refresh(conn, {c[0] for c in batch})


_WRITERS: dict[str, Callable[[Connection, list[list[str]], FactsUpkeep, Any], None]] = {
    "customers": _write_customers,
    "interactions": _write_interactions,
    "points": _write_points,
}
