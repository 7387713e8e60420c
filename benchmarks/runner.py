"""``python -m benchmarks run``: every SPEC §11 figure beside its reference.

Prints a table (figure, reference, ratio, target, pass/fail, load average)
and writes the same rows as JSON. ``--only`` runs one group: ``audience``,
``planning``, ``rendering``, ``dispatch``, ``memory``.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engage.db import make_engine
from engage.timeutil import isoformat_z, parse_instant

from . import audience, dispatch, generate, importing, planning, rendering
from .common import (
    Context,
    Result,
    bench_config,
    count_customers,
    cpu_check,
    dataset_now,
    load_avg,
)

GROUPS: dict[str, Callable[[Context], list[Result]]] = {
    "audience": audience.run,
    "planning": planning.run_planning,
    "rendering": rendering.run,
    "dispatch": dispatch.run,
    "memory": planning.run_memory,
    "import": importing.run,
}


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f} {unit}".strip()
    text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


def table(results: list[Result]) -> str:
    head = ("figure", "value", "reference", "ratio", "target", "result", "load")
    rows = [
        (
            r.name,
            _fmt(r.figure, r.unit),
            f"{_fmt(r.reference)} ({r.reference_label})" if r.reference is not None else "-",
            _fmt(r.ratio),
            r.target,
            {True: "PASS", False: "FAIL", None: "-"}[r.passed],
            f"{r.load_avg[0]:.2f}",
        )
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True))
             for row in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(db: str, *, scale: float | None, only: list[str] | None, json_path: str | None,
        now: str | None, out: Any = None) -> int:
    out = out or sys.stdout
    engine = make_engine(db)
    customers = count_customers(engine) if _has_tables(engine) else 0
    if customers == 0:  # an empty database: make the data set at --scale first
        out.write(f"no data set in {db}: generating one at scale {scale or 1.0:g}\n")
        generate.main(["--db", db, "--scale", str(scale or 1.0)]
                      + (["--now", now] if now else []))
        customers = count_customers(engine)
    as_of = parse_instant(now) if now else dataset_now(engine)
    if scale is None:
        scale = customers / 1_000_000
    started = datetime.now(UTC)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="engage-bench-") as tmp:
        ctx = Context(engine, db, bench_config(Path(tmp)), as_of, scale, customers, Path(tmp))
        cpu_before = cpu_check()
        out.write(f"engage benchmarks: {engine.dialect.name}, {customers:,} customers "
                  f"(scale {scale:g}), as of {isoformat_z(as_of)}, load {load_avg()}, "
                  f"CPU check {cpu_before:.3f} s\n")
        for name, fn in GROUPS.items():
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            out.write(f"  {name} ...")
            out.flush()
            got = fn(ctx)
            out.write(f" {time.perf_counter() - t0:.1f} s\n")
            results.extend(got)
    engine.dispose()
    cpu_after = cpu_check()
    out.write("\n" + table(results) + "\n")
    out.write(f"\nCPU check (a fixed Python loop; lower is a faster machine): "
              f"{cpu_before:.3f} s before, {cpu_after:.3f} s after\n")
    report = {
        "backend": engine.dialect.name,
        "customers": customers,
        "scale": scale,
        "as_of": isoformat_z(as_of),
        "started": isoformat_z(started),
        "machine": {"cpus": _cpus(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpu_check_s": {"before": cpu_before, "after": cpu_after}},
        "results": [r.to_json() for r in results],
        "all_passed": all(r.passed is not False for r in results),
    }
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
        out.write(f"\nwrote {json_path}\n")
    return 0 if report["all_passed"] else 1


def _has_tables(engine: Any) -> bool:
    from sqlalchemy import inspect

    return inspect(engine).has_table("customer")


def _cpus() -> int | None:
    import os

    return os.cpu_count()
