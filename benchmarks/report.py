"""``engage report`` over the whole data set, and each of its statements
beside a hand-written query for the same figure.

The period is the last 30 complete days before the data set's present. Two
campaigns get messages in it first (``bench-report-holdout``: 10% of the
customers, a 10% holdout, every delivery state, a few opt-outs;
``bench-report-all``: 5%, no holdout), so the campaign statements have work
to do; they are removed afterwards like every benchmark's rows.

Rows: the whole report (``build_report``, best of three) beside the sum of
the hand-written statements; one row per statement (best of five: they are
short, and a shared machine's noise is not), engage's beside the
hand-written one, with the two results compared (a mismatch fails the row);
the peak RSS of a fresh process that builds the report.

The hand-written statements are the fastest SQL I know for each figure on
both backends: plain text with ``FILTER`` aggregates, the same index paths.
"""

from __future__ import annotations

import multiprocessing
import re
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, select, text

from engage.config import Config
from engage.db import make_engine
from engage.db.bulk import insert_ignore
from engage.db.models import Customer, Message, Suppression, UTCDateTime
from engage.report import Period, build_report
from engage.report.campaigns import conversions_query, funnel_query
from engage.report.shop import engaged_kinds, shop_queries

from .common import (
    PREFIX,
    SOURCE,
    Context,
    Result,
    bench_config,
    best_of,
    load_avg,
    peak_rss_mb,
    scratch,
    timed,
)

HOLDOUT, ALL = f"{PREFIX}report-holdout", f"{PREFIX}report-all"
TARGET_S = 5.0
TARGET_MB = 200.0

# --- hand-written statements ---------------------------------------------------------

HAND: dict[str, str] = {
    "customers": """
        SELECT count(*), count(*) FILTER (WHERE created_at >= :s)
        FROM customer WHERE created_at < :e""",
    "retention": """
        SELECT count(*) FILTER (WHERE b.at_start = 1),
               count(*) FILTER (WHERE b.at_end = 1),
               count(*) FILTER (WHERE b.in_period = 1 AND b.at_start = 0 AND NOT EXISTS (
                   SELECT 1 FROM interaction j WHERE j.customer_id = b.customer_id
                   AND j.kind = 'order' AND j.occurred_at < :lo)),
               count(*) FILTER (WHERE b.at_start = 1 AND b.at_end = 1)
        FROM (SELECT customer_id,
                     max(CASE WHEN occurred_at < :s THEN 1 ELSE 0 END) AS at_start,
                     max(CASE WHEN occurred_at >= :e_lo THEN 1 ELSE 0 END) AS at_end,
                     max(CASE WHEN occurred_at >= :s THEN 1 ELSE 0 END) AS in_period
              FROM interaction WHERE kind = 'order' AND occurred_at >= :lo AND occurred_at < :e
              GROUP BY customer_id) AS b""",
    "activity": """
        SELECT count(*) FILTER (WHERE a.now = 1), count(*) FILTER (WHERE a.before = 1),
               count(*) FILTER (WHERE a.before = 1 AND a.now = 0)
        FROM (SELECT customer_id,
                     max(CASE WHEN occurred_at >= :s THEN 1 ELSE 0 END) AS now,
                     max(CASE WHEN occurred_at < :s THEN 1 ELSE 0 END) AS before
              FROM interaction WHERE kind IN ({kinds})
              AND occurred_at >= :ps AND occurred_at < :e
              GROUP BY customer_id) AS a""",
    "purchases": """
        WITH b AS {materialized} (
            SELECT p.customer_id, p.orders, p.cents,
                   (SELECT count(*) FROM interaction j WHERE j.customer_id = p.customer_id
                    AND j.kind = 'order' AND j.occurred_at < :s) AS earlier
            FROM (SELECT customer_id, count(*) AS orders, sum(round(amount * 100)) AS cents
                  FROM interaction WHERE kind = 'order'
                  AND occurred_at >= :s AND occurred_at < :e
                  GROUP BY customer_id) AS p)
        SELECT coalesce(sum(b.orders), 0), coalesce(sum(b.cents), 0), count(*),
               count(*) FILTER (WHERE b.orders + b.earlier >= 2),
               count(*) FILTER (WHERE b.orders + b.earlier >= :loyal)
        FROM b""",
    "points": """
        SELECT (SELECT coalesce(sum(points), 0) FROM points_lot
                WHERE earned_at >= :s AND earned_at < :e),
               (SELECT coalesce(sum(points), 0) FROM points_redemption
                WHERE redeemed_at >= :s AND redeemed_at < :e),
               (SELECT coalesce(sum(remaining), 0) FROM points_lot
                WHERE expires_at >= :s AND expires_at < :e AND remaining > 0)""",
    "nps": """
        SELECT count(*) FILTER (WHERE score >= 9),
               count(*) FILTER (WHERE score BETWEEN 7 AND 8),
               count(*) FILTER (WHERE score <= 6)
        FROM (SELECT score, row_number() OVER (PARTITION BY customer_id
                                               ORDER BY occurred_at DESC, id DESC) AS r
              FROM interaction WHERE kind = 'nps' AND occurred_at >= :s AND occurred_at < :e
              AND score BETWEEN 0 AND 10) AS a
        WHERE r = 1""",
    "funnel": """
        SELECT campaign, {bucket} AS bucket, status, count(*) FROM message
        WHERE status IN ({states}) AND send_after >= :s AND send_after < :e
        GROUP BY 1, 2, 3""",
    "conversions": """
        SELECT m.campaign, m.holdout, m.bucket, count(*), count(a.id),
               coalesce(sum(a.orders), 0), coalesce(sum(a.cents), 0),
               sum(CASE WHEN m.send_after > :open_since THEN 1 ELSE 0 END)
        FROM ({members}) AS m LEFT JOIN (
            SELECT m.id, count(*) AS orders, sum(round(o.amount * 100)) AS cents
            FROM ({members}) AS m JOIN interaction o ON o.customer_id = m.customer_id
                AND o.kind = 'order' AND o.occurred_at >= m.send_after
                AND o.occurred_at < {window_end}
                AND o.occurred_at >= :s AND o.occurred_at < :horizon
            WHERE NOT EXISTS (
                SELECT 1 FROM message x WHERE x.campaign = m.campaign
                AND x.customer_id = m.customer_id AND x.status IN ({grouped})
                AND x.send_after >= :s AND x.send_after < :horizon
                AND x.send_after <= o.occurred_at
                AND (x.send_after > m.send_after OR (x.send_after = m.send_after AND x.id > m.id)))
            GROUP BY m.id) AS a ON a.id = m.id
        GROUP BY m.campaign, m.holdout, m.bucket""",
}
# The period's recipients and holdout (written out twice above: as a CTE,
# SQLite materializes it without an index and probes every order per member).
MEMBERS = """
        SELECT id, campaign, customer_id, send_after,
               CASE WHEN status = 'held_out' THEN 1 ELSE 0 END AS holdout, {bucket} AS bucket
        FROM message WHERE status IN ({grouped}) AND send_after >= :s AND send_after < :e"""
STATES = (
    "planned",
    "sending",
    "sent",
    "delivered",
    "bounced",
    "undelivered",
    "retry",
    "failed",
    "unknown",
    "held_out",
    "render_error",
    "cancelled",
    "expired",
)
GROUPED = ("sent", "delivered", "bounced", "undelivered", "held_out")


def _quoted(values: Any) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def hand_bucket(buckets: int) -> str:
    """The chart bucket of ``send_after`` as one CASE over the boundaries
    ``:b1`` ... (what one would write by hand; engage's is a balanced tree)."""
    whens = " ".join(f"WHEN send_after < :b{k} THEN {k - 1}" for k in range(1, buckets))
    return f"CASE {whens} ELSE {buckets - 1} END" if whens else "0"


def hand_sql(name: str, dialect: str, kinds: list[str], window: timedelta, buckets: int = 1) -> str:
    sql = HAND[name]
    if name == "activity":
        sql = sql.format(kinds=_quoted(kinds) or "NULL")
    elif name == "purchases":  # PostgreSQL would count each buyer's earlier orders twice
        sql = sql.format(materialized="MATERIALIZED" if dialect == "postgresql" else "")
    elif name == "funnel":
        sql = sql.format(states=_quoted(STATES), bucket=hand_bucket(buckets))
    elif name == "conversions":
        seconds = window.days * 86_400 + window.seconds
        if dialect == "postgresql":
            end = f"m.send_after + interval '{seconds} seconds'"
        else:  # shift the whole seconds, keep the stored fraction
            end = (
                f"datetime(substr(m.send_after, 1, 19), '+{seconds} seconds')"
                " || substr(m.send_after, 20)"
            )
        sql = sql.format(
            members=MEMBERS.format(grouped=_quoted(GROUPED), bucket=hand_bucket(buckets)),
            window_end=end,
            grouped=_quoted(GROUPED),
        )
    return sql


def hand_params(
    period: Period, config: Config, marks: list[datetime], now: datetime
) -> dict[str, Any]:
    w = config.retention_window
    return {
        **{f"b{k}": marks[k] for k in range(1, len(marks) - 1)},
        "open_since": now - config.attribution_window,
        "s": period.start,
        "e": period.end,
        "lo": period.start - w,
        "e_lo": period.end - w,
        "ps": period.previous_start,
        "loyal": config.loyal_min_orders,
        "horizon": period.end + config.attribution_window,
    }


def _hand_query(sql: str, params: dict[str, Any]) -> Any:
    used = [k for k in params if re.search(rf":{k}\b", sql)]
    binds = [
        bindparam(k, params[k], type_=UTCDateTime() if isinstance(params[k], datetime) else None)
        for k in used
    ]
    return text(sql).bindparams(*binds)


def _normalise(rows: list[Any]) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples (numbers as ints, text as text), sorted."""
    return sorted(tuple(v if isinstance(v, str) else int(v or 0) for v in row) for row in rows)


# --- the campaigns' messages ---------------------------------------------------------


def _chosen(cid: str, salt: str, percent: float) -> int | None:
    """A stable number in [0, 10000) for (customer, salt) when the customer is
    among ``percent`` of them, else None."""
    h = zlib.crc32(f"{salt}:{cid}".encode()) % 10_000
    return h if h < percent * 100 else None


def _message_rows(ctx: Context, period: Period) -> Iterator[tuple[list[dict], list[dict]]]:
    span = (period.end - period.start).total_seconds()
    c = Customer.__table__
    messages: list[dict[str, Any]] = []
    opt_outs: list[dict[str, Any]] = []
    with ctx.engine.connect() as conn:
        ids = conn.execution_options(stream_results=True, yield_per=10_000).execute(
            select(c.c.id).where(c.c.created_at < period.start)
        )
        for (cid,) in ids:
            for name, share, holdout in ((HOLDOUT, 10.0, 10.0), (ALL, 5.0, 0.0)):
                h = _chosen(cid, name, share)
                if h is None:
                    continue
                at = period.start + timedelta(seconds=span * h / (share * 100))
                held = h < share * holdout  # the first holdout% of the chosen
                k = h % 100
                status = (
                    "held_out"
                    if held
                    else "delivered"
                    if k < 55
                    else "sent"
                    if k < 85
                    else "bounced"
                    if k < 88
                    else "failed"
                    if k < 90
                    else "cancelled"
                    if k < 93
                    else "undelivered"
                    if k < 95
                    else "planned"
                )
                messages.append(
                    {
                        "dedupe_key": f"{name}|{cid}",
                        "campaign": name,
                        "customer_id": cid,
                        "channel": "email",
                        "address": None,
                        "template": "winback",
                        "priority": 50,
                        "counts_toward_cap": True,
                        "status": status,
                        "planned_at": at,
                        "send_after": at,
                        "attempts": 1,
                        "sent_at": None if held else at,
                        "updated_at": at,
                    }
                )
                if not held and k == 99:
                    opt_outs.append(
                        {
                            "channel": "email",
                            "address": f"{cid}@{name}.invalid",
                            "customer_id": cid,
                            "reason": "unsubscribe",
                            "source": SOURCE,
                            "campaign": name,
                            "created_at": at + timedelta(hours=1),
                        }
                    )
            if len(messages) >= 5000:
                yield messages, opt_outs
                messages, opt_outs = [], []
    yield messages, opt_outs


def seed_campaigns(ctx: Context, period: Period) -> dict[str, int]:
    counts = {"messages": 0, "opt_outs": 0}
    for messages, opt_outs in _message_rows(ctx, period):
        with ctx.engine.begin() as conn:
            counts["messages"] += insert_ignore(conn, Message.__table__, messages, ["dedupe_key"])
            counts["opt_outs"] += insert_ignore(
                conn, Suppression.__table__, opt_outs, ["channel", "address"]
            )
    if ctx.engine.dialect.name == "postgresql":
        with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE message, suppression"))
    return counts


# --- the runs ------------------------------------------------------------------------


def _statements(engine: Engine, period: Period, config: Config, now: datetime) -> dict[str, Any]:
    with engine.connect() as conn:
        kinds = engaged_kinds(conn, config)
    unit, marks = period.buckets()
    mine: dict[str, Any] = dict(shop_queries(period, config, kinds))
    mine["funnel"] = funnel_query(period, marks)
    mine["conversions"] = conversions_query(period, config.attribution_window, marks, now)
    params = hand_params(period, config, marks, now)
    dialect, window = engine.dialect.name, config.attribution_window
    hand = {
        name: _hand_query(hand_sql(name, dialect, kinds, window, len(marks) - 1), params)
        for name in mine
    }
    return {"mine": mine, "hand": hand, "kinds": kinds}


def _rows(engine: Engine, query: Any) -> list[Any]:
    """All rows, in a transaction set up as ``build_report`` sets up its own
    (no JIT on PostgreSQL), for engage's statements and the references alike."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")
        return list(conn.execute(query))


def _steady_state(engine: Engine) -> None:
    """PostgreSQL: VACUUM (ANALYZE) the tables the report reads. A data set
    just written by COPY has no visibility map, so every index-only scan
    would visit the table as well; a live database has one, kept by
    autovacuum. Quick when it is already done (a second run)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) interaction, points_lot, points_redemption, customer"))


def _same(mine: list[Any], hand: list[Any]) -> bool:
    return _normalise(mine) == _normalise(hand)


def run(ctx: Context, runs: int = 3, statement_runs: int = 5) -> list[Result]:
    config = ctx.config
    period = Period.of_days(None, None, config.zone, ctx.now)
    results: list[Result] = []
    _steady_state(ctx.engine)
    with scratch(ctx.engine):
        seeded = seed_campaigns(ctx, period)
        statements = _statements(ctx.engine, period, config, ctx.now)
        per: dict[str, tuple[float, float, bool]] = {}
        order = list(statements["mine"])
        for k, name in enumerate(order):
            mine_q, hand_q = statements["mine"][name], statements["hand"][name]
            # alternate which side runs first: a warm cache favours the second
            first, second = (mine_q, hand_q) if k % 2 == 0 else (hand_q, mine_q)
            s1, r1 = best_of(statement_runs, lambda q=first: _rows(ctx.engine, q))
            s2, r2 = best_of(statement_runs, lambda q=second: _rows(ctx.engine, q))
            (mine_s, mine_rows), (hand_s, hand_rows) = (
                ((s1, r1), (s2, r2)) if k % 2 == 0 else ((s2, r2), (s1, r1))
            )
            per[name] = (mine_s, hand_s, _same(mine_rows, hand_rows))
        now = ctx.now
        whole_s, report = best_of(runs, lambda: build_report(ctx.engine, config, period, now))
        memory = _memory(ctx, period)
    hand_total = sum(h for _, h, _ in per.values())
    shop = report.shop
    results.append(
        Result(
            name=f"report, whole ({ctx.customers:,} customers, 30 days)",
            figure=round(whole_s, 4),
            unit="s",
            reference=round(hand_total, 4),
            reference_label="sum of the hand-written statements, s",
            target=f"< {TARGET_S:g} s",
            passed=whole_s < TARGET_S and all(same for _, _, same in per.values()),
            ratio=round(whole_s / hand_total, 2) if hand_total > 0 else None,
            details={
                "statements_s": {n: round(m, 4) for n, (m, _, _) in per.items()},
                "campaign_messages": seeded["messages"],
                "opt_outs": seeded["opt_outs"],
                "orders": shop.purchases.orders,
                "active": shop.activity.active,
                "nps_answers": shop.nps.responses,
                "engaged_kinds": statements["kinds"],
            },
            load_avg=load_avg(),
        )
    )
    for name, (mine_s, hand_s, same) in per.items():
        ratio = mine_s / hand_s if hand_s > 0 else None
        results.append(
            Result(
                name=f"report {name}",
                figure=round(mine_s, 6),
                unit="s",
                reference=round(hand_s, 6),
                reference_label="hand-written SQL, s",
                target="ratio <= 2",
                passed=same and ratio is not None and ratio <= 2.0,
                ratio=round(ratio, 2) if ratio is not None else None,
                details={"same_result_as_reference": same},
                load_avg=load_avg(),
            )
        )
    mb = memory["peak_rss_mb"]
    results.append(
        Result(
            name="peak RSS building the report",
            figure=round(mb, 1),
            unit="MB",
            reference=round(memory["rss_before_mb"], 1),
            reference_label="RSS of the child before the report, MB",
            target=f"< {TARGET_MB:g} MB",
            passed=mb < TARGET_MB,
            details={k: round(v, 3) if isinstance(v, float) else v for k, v in memory.items()},
            load_avg=load_avg(),
        )
    )
    return results


def _memory_child(db_url: str, workdir: str, start: str, end: str, now_iso: str, out: Any) -> None:
    config = bench_config(Path(workdir))
    engine = make_engine(db_url)
    before = peak_rss_mb()
    period = Period.between(datetime.fromisoformat(start), datetime.fromisoformat(end), config.zone)
    seconds, report = timed(
        lambda: build_report(engine, config, period, datetime.fromisoformat(now_iso))
    )
    engine.dispose()
    out.send(
        {
            "peak_rss_mb": peak_rss_mb(),
            "rss_before_mb": before,
            "seconds": seconds,
            "campaigns": len(report.campaigns),
        }
    )


def _memory(ctx: Context, period: Period) -> dict[str, Any]:
    """Build the report in a fresh process; its peak RSS is the report's own."""
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe(duplex=False)
    proc = spawn.Process(
        target=_memory_child,
        args=(
            ctx.db_url,
            str(ctx.workdir),
            period.start.isoformat(),
            period.end.isoformat(),
            ctx.now.isoformat(),
            child,
        ),
    )
    proc.start()
    child.close()
    report: dict[str, Any] = parent.recv()
    proc.join()
    return report
