"""Planning with every rule of SPEC §5 at work, and peak memory of a huge plan.

Before planning, the audience gets history so that each rule has something
to decide: suppressed emails, earlier sends of this campaign (reentry),
messages of another campaign filling the frequency cap (some of them planned
at a lower priority, so they are preempted), a 10% holdout and a send window
that is closed for part of the world at the planned instant.

Memory is measured in a child process (``resource.getrusage`` of that child
only): it plans an occurrence whose audience is every customer.
"""

from __future__ import annotations

import multiprocessing
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engage.campaigns.audience import audience_ids
from engage.customers.facts import facts_reading
from engage.db import make_engine
from engage.db.bulk import insert_ignore
from engage.db.models import Customer, Message, Suppression
from engage.planning.planner import plan_occurrence

from .common import (
    PREFIX,
    SOURCE,
    Context,
    Result,
    bench_config,
    campaign,
    load_avg,
    peak_rss_mb,
    scratch,
    timed,
)

PLAN_AUDIENCE: dict[str, Any] = {
    "quiet_for": "30d",
    "active_within": "730d",
    "tiers": ["silver", "gold", "platinum"],
}
PLANNED_AT_SCALE_1 = 100_000
SECONDS_PER_100K = 5.0  # SPEC §11 (and issue 17): under 5 s on SQLite and PostgreSQL


def plan_campaign() -> Any:
    return campaign(
        f"{PREFIX}plan",
        PLAN_AUDIENCE,
        holdout="10%",
        reentry="after_activity",
        priority=60,
        send_window={"start": "09:00", "end": "20:00"},
    )


def _chunks(rows: list[dict[str, Any]], size: int = 5000) -> Any:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def seed_history(ctx: Context, camp: Any, rng: random.Random) -> dict[str, int]:
    """Suppressions and message history for members of the planning audience."""
    c = Customer.__table__
    ids = audience_ids(camp.audience, ctx.config, ctx.now, facts=_facts(ctx)).subquery()
    with ctx.engine.connect() as conn:
        emails: dict[str, str | None] = {
            cid: email
            for cid, email in conn.execute(
                select(c.c.id, c.c.email).join(ids, ids.c.id == c.c.id)
            )
        }
    members = list(emails)
    members.sort()
    now = ctx.now
    history: list[dict[str, Any]] = []
    suppressed: list[dict[str, Any]] = []

    def message(cid: str, name: str, status: str, when: datetime, priority: int) -> None:
        history.append(
            {
                "dedupe_key": f"{name}|{len(history)}|{cid}",
                "campaign": name,
                "customer_id": cid,
                "channel": "email",
                "address": None,
                "template": "winback",
                "priority": priority,
                "counts_toward_cap": True,
                "status": status,
                "planned_at": when - timedelta(minutes=5),
                "send_after": when,
                "sent_at": when if status == "sent" else None,
                "attempts": 1 if status == "sent" else 0,
                "updated_at": when,
            }
        )

    for cid in members:
        x = rng.random()
        if x < 0.20:  # this campaign reached them before: reentry decides
            message(cid, camp.name, "sent", now - timedelta(days=rng.uniform(20, 200)), 60)
        elif x < 0.30:  # the cap is full with another campaign's messages
            for k in range(3):
                status = "planned" if k == 0 and rng.random() < 0.5 else "sent"
                message(cid, f"{PREFIX}other", status, now - timedelta(days=k + 1), 10)
        elif x < 0.32 and emails[cid]:
            suppressed.append(
                {
                    "channel": "email",
                    "address": str(emails[cid]).strip().lower(),
                    "customer_id": cid,
                    "reason": "unsubscribe",
                    "source": SOURCE,
                    "created_at": now - timedelta(days=3),
                }
            )
    with ctx.engine.begin() as conn:
        for rows in _chunks(history):
            insert_ignore(conn, Message.__table__, rows, ["dedupe_key"])
        for rows in _chunks(suppressed):
            insert_ignore(conn, Suppression.__table__, rows, ["channel", "address"])
    return {"audience": len(members), "history_messages": len(history),
            "suppressions": len(suppressed)}


def run_planning(ctx: Context) -> list[Result]:
    camp = plan_campaign()
    with scratch(ctx.engine):
        seeded = seed_history(ctx, camp, random.Random(11))
        ref_s, _ = timed(lambda: _count_ids(ctx, camp))
        seconds, result = timed(
            lambda: plan_occurrence(ctx.engine, ctx.config, camp, ctx.now, now=ctx.now)
        )
    written = result.inserted
    target_s = SECONDS_PER_100K * max(written, 1) / PLANNED_AT_SCALE_1
    per_100k = seconds * PLANNED_AT_SCALE_1 / max(written, 1)
    return [
        Result(
            name=f"planning {written:,} messages, all rules",
            figure=round(seconds, 4),
            unit="s",
            reference=round(ref_s, 4),
            reference_label="audience id select alone, s",
            target=f"< {target_s:.2f} s ({SECONDS_PER_100K:g} s per 100k)",
            passed=seconds < target_s,
            ratio=round(seconds / ref_s, 2) if ref_s else None,
            details={
                "seconds_per_100k": round(per_100k, 2),
                "counts": result.counts,
                **seeded,
            },
            load_avg=load_avg(),
        )
    ]


def _facts(ctx: Context) -> str:
    with ctx.engine.connect() as conn:
        return facts_reading(conn, ctx.config, ctx.now)


def _count_ids(ctx: Context, camp: Any) -> int:
    """The reference: the audience's ids as engage selects them (from the
    facts when they answer the instant, as the planner's stream does)."""
    facts = _facts(ctx)
    with ctx.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            audience_ids(camp.audience, ctx.config, ctx.now, facts=facts)
        )
        return sum(1 for _ in result)


# -- memory ------------------------------------------------------------------------------


def _memory_child(db_url: str, workdir: str, now_iso: str, out: Any) -> None:
    config = bench_config(Path(workdir))
    engine = make_engine(db_url)
    before = peak_rss_mb()
    camp = campaign(f"{PREFIX}memory", {}, holdout="10%")
    now = datetime.fromisoformat(now_iso)
    seconds, result = timed(lambda: plan_occurrence(engine, config, camp, now, now=now))
    engine.dispose()
    out.send(
        {
            "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": before,
            "seconds": seconds,
            "matched": result.counts.get("matched", 0),
            "inserted": result.inserted,
        }
    )


def run_memory(ctx: Context) -> list[Result]:
    """Plan for the whole customer table in a fresh process; report its peak RSS."""
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe(duplex=False)
    with scratch(ctx.engine):
        proc = spawn.Process(
            target=_memory_child, args=(ctx.db_url, str(ctx.workdir), ctx.now.isoformat(), child)
        )
        proc.start()
        child.close()
        report = parent.recv()
        proc.join()
    mb = report["peak_rss_mb"]
    return [
        Result(
            name=f"peak RSS planning {report['matched']:,} customers",
            figure=round(mb, 1),
            unit="MB",
            reference=round(report["rss_before_mb"], 1),
            reference_label="RSS of the child before planning, MB",
            target="< 400 MB",
            passed=mb < 400,
            ratio=None,
            details={k: round(v, 2) if isinstance(v, float) else v for k, v in report.items()},
            load_avg=load_avg(),
        )
    ]
