"""What every benchmark shares: the result row, the run context, campaign and
config builders, and the bookkeeping rows a run adds to (and removes from) the
data set.

A run writes only rows it can recognise and delete again: messages and
campaign runs of campaigns named ``bench-*`` and suppressions whose source is
``benchmark``. So the generated data set stays reusable between runs.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, select, text

from engage.campaigns.schema import Campaign
from engage.config import Config
from engage.db.models import CampaignRun, Customer, Message, Suppression

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "bench-"
SOURCE = "benchmark"
SECRET = "benchmark-secret-key-0123456789abcdef"
SG_KEY = "SG.benchmark-key"
TW_SID, TW_TOKEN = "AC" + "b" * 32, "benchmark-token"


@dataclass
class Result:
    """One line of the table: a figure beside its reference and its target."""

    name: str
    figure: float
    unit: str
    reference: float | None
    reference_label: str
    target: str
    passed: bool | None  # None: informational, no target
    ratio: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """Everything a benchmark needs; built once per run by the runner."""

    engine: Engine
    db_url: str
    config: Config
    now: datetime  # the data set's present: every benchmark runs "as of" it
    scale: float
    customers: int
    workdir: Path


def load_avg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MB.

    On Linux this reads VmHWM: ``ru_maxrss`` survives ``exec``, so a spawned
    child would report its parent's peak at the fork (the memory benchmark
    did: 168 MB before planning anything)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_check(iterations: int = 2_000_000, runs: int = 3) -> float:
    """Seconds for a fixed pure-Python loop (best of ``runs``): how fast this
    machine is right now.

    Shared and virtual machines change speed from minute to minute (on the
    2-core VM of our measurements, 10 million iterations of this loop took
    from 0.92 s to 1.68 s within one hour), and every figure moves with it. A
    run reports this before and after, so its figures can be read beside it.
    """

    def loop() -> int:
        total = 0
        for i in range(iterations):
            total += i
        return total

    return round(best_of(runs, loop)[0], 3)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """The fastest of ``runs`` timings (the least disturbed by other load)."""
    best, value = float("inf"), None
    for _ in range(runs):
        seconds, value = timed(fn)
        best = min(best, seconds)
    return best, value


def bench_config(workdir: Path, **overrides: Any) -> Config:
    """A config over the repository's templates; channels default to ``file``."""
    data: dict[str, Any] = {
        "timezone": "UTC",
        "public_url": "https://engage.shop.test",
        "shop": {
            "name": "Benchmark Shop",
            "url": "https://shop.test",
            "postal_address": "1 Benchmark Street, Springfield",
            "support_email": "help@shop.test",
        },
        "templates_dir": str(ROOT / "templates"),
        "channels": {"email": "file", "sms": "file", "file": {"dir": str(workdir / "outbox")}},
        "base_dir": workdir,
    }
    secrets = overrides.pop("secrets", {})
    data.update(overrides)
    data["secrets"] = {"ENGAGE_SECRET_KEY": SECRET, **secrets}
    return Config.model_validate(data)


def campaign(name: str, audience: dict[str, Any], **kw: Any) -> Campaign:
    data: dict[str, Any] = {
        "name": name,
        "schedule": {"cron": "0 10 * * *", "timezone": "UTC"},
        "audience": audience,
        "channels": ["email", "sms"],
        "template": "winback",
    }
    data.update(kw)
    return Campaign.model_validate(data)


def dataset_now(engine: Engine) -> datetime:
    """The generator's ``--now``: the newest sign-up, rounded up to midnight UTC
    (the generator creates customers up to an hour before ``now``)."""
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(Customer.__table__.c.created_at))).scalar_one()
    if newest is None:
        raise SystemExit("the database holds no customers: run python -m benchmarks.generate")
    midnight = newest.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == newest else midnight + timedelta(days=1)


def count_customers(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Customer.__table__)).scalar_one())


def cleanup(engine: Engine) -> None:
    """Remove every row an earlier run added (``bench-*`` campaigns, our suppressions).

    On PostgreSQL the tables are vacuumed afterwards: a run deletes about a
    million rows (the memory plan covers every customer), and without
    autovacuum (it can be off, as on our benchmark server) the next group
    would scan their dead index entries: a dispatch claim on an empty outbox
    took 14 ms walking 610,000 of them."""
    m, r, s = Message.__table__, CampaignRun.__table__, Suppression.__table__
    with engine.begin() as conn:
        deleted = conn.execute(delete(m).where(m.c.campaign.startswith(PREFIX))).rowcount
        deleted += conn.execute(delete(r).where(r.c.campaign.startswith(PREFIX))).rowcount
        deleted += conn.execute(delete(s).where(s.c.source == SOURCE)).rowcount
    if engine.dialect.name == "postgresql" and deleted:
        tables = ", ".join(t.name for t in (m, r, s))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM (ANALYZE) {tables}"))


@contextmanager
def scratch(engine: Engine) -> Iterator[None]:
    """Clean before and after, so one failed benchmark does not poison the next."""
    cleanup(engine)
    try:
        yield
    finally:
        cleanup(engine)
