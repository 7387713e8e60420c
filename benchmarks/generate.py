"""Make the benchmark data set: ``python -m benchmarks.generate --db URL --scale 1``.

Scale 1 is SPEC §11's data set: 1,000,000 customers with about 10,000,000
interactions and 2,000,000 point lots. Tables are created by the migrations
(``engage.db.upgrade``); the database must hold no customers yet. The same
``--seed`` and ``--now`` give the same rows, so a benchmark can be rerun on
identical data; pass the same ``--now`` to the benchmarks that query it.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import UTC, datetime

from engage.db import make_engine, upgrade
from engage.ingest.sample import SampleStats, generate
from engage.timeutil import parse_instant

CUSTOMERS_AT_SCALE_1 = 1_000_000


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="database URL (sqlite:///... or postgresql://...)")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 1,000,000 customers")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--now", help="the data set's present (ISO date); default: today 00:00 UTC")
    parser.add_argument("--batch", type=int, default=10_000, help="rows per bulk insert")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON here")
    args = parser.parse_args(argv)

    now = (parse_instant(args.now) if args.now
           else datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0))
    customers = max(1, round(CUSTOMERS_AT_SCALE_1 * args.scale))
    engine = make_engine(args.db)
    upgrade(engine)
    print(f"generating {customers:,} customers (seed {args.seed}, now {now.isoformat()}) "
          f"into {engine.url.render_as_string(hide_password=True)}", flush=True)

    last_report = [0.0]

    def progress(stats: SampleStats) -> None:
        if stats.elapsed - last_report[0] >= 5 or stats.customers == customers:
            last_report[0] = stats.elapsed
            print(f"  {stats.customers:>10,} customers {stats.rows:>12,} rows "
                  f"{stats.elapsed:8.1f} s {stats.rows_per_second:>9,.0f} rows/s "
                  f"peak RSS {peak_rss_mb():.0f} MB", flush=True)

    started = time.perf_counter()
    stats = generate(engine, customers=customers, seed=args.seed, now=now,
                     batch=args.batch, progress=progress)
    engine.dispose()
    summary = {
        "backend": engine.dialect.name,
        "scale": args.scale,
        "seed": args.seed,
        "now": now.isoformat(),
        "customers": stats.customers,
        "interactions": stats.interactions,
        "points_lots": stats.lots,
        "redemptions": stats.redemptions,
        "allocations": stats.allocations,
        "rows": stats.rows,
        "seconds": round(time.perf_counter() - started, 2),
        "rows_per_second": round(stats.rows_per_second),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(f"done: {stats.rows:,} rows in {summary['seconds']} s "
          f"({summary['rows_per_second']:,} rows/s), peak RSS {summary['peak_rss_mb']} MB")
    print(f"  customers {stats.customers:,}  interactions {stats.interactions:,}  "
          f"lots {stats.lots:,}  redemptions {stats.redemptions:,}  "
          f"allocations {stats.allocations:,}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
