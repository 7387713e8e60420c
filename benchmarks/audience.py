"""Audience selection through ``engage.campaigns.audience`` vs the fastest hand SQL.

For each audience two figures are taken, each beside its reference: the
count (``count_audience``) and the full id list streamed from the
``audience_ids`` select, reading ``customer_facts`` when they answer the
instant (as engage does). The reference is the fastest of several
hand-written queries for the same set on that backend, each timed and each
compared with engage's set (a mismatch fails the row):

- ``probes``: correlated ``NOT EXISTS``/``EXISTS`` probes of the
  ``(customer_id, occurred_at)`` index (the shape engage generates on the log);
- ``anti-join``: the customers with a recent engagement found once from the
  ``(kind, occurred_at)`` index and excluded as a set;
- ``arithmetic`` (counts only): the quiet count as sign-ups by the cutoff
  minus those of them active since, plus the later sign-ups quiet anyway;
- ``facts``: a query on ``customer_facts`` (only where they answer the instant);
- ``lots``: for points, a semi-join from the lots expiring in the window.

``quiet_for: 30d`` also has an absolute target: under 1 s at 1,000,000
customers on SQLite (scaled with the number of customers).
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import bindparam, column, func, select, text

from engage.campaigns.audience import audience_ids, count_audience
from engage.campaigns.schema import Audience
from engage.customers.facts import FACTS, facts_reading
from engage.db.models import UTCDateTime
from engage.ingest.sample import KINDS as SAMPLE_KINDS

from .common import Context, Result, best_of, load_avg

AUDIENCES: dict[str, dict[str, Any]] = {
    "quiet_for": {"quiet_for": "30d"},
    "points_expiring": {"points_expiring_within": "14d"},
    "combined": {
        "quiet_for": "30d",
        "active_within": "365d",
        "min_orders": 1,
        "tiers": ["silver", "gold", "platinum"],
    },
}
MAX_RATIO = 1.5
QUIET_AT_1M_S = 1.0  # quiet_for: 30d, count, SQLite

# Engagement = every kind but email_open (the config default). The anti-join
# names the engaged kinds of the data set, so the (kind, occurred_at) index
# serves each one as a range.
_ENGAGED = "i.kind <> 'email_open'"
_KINDS = "i.kind IN (" + ", ".join(f"'{k}'" for k in SAMPLE_KINDS if k != "email_open") + ")"

_QUIET_PROBES = f"""
    c.created_at <= :as_of
    AND NOT EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                    AND i.occurred_at > :cutoff AND i.occurred_at <= :as_of AND {_ENGAGED})
    AND (c.created_at <= :cutoff
         OR EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                    AND i.occurred_at <= :cutoff AND {_ENGAGED}))
"""
_RECENT = f"""SELECT i.customer_id FROM interaction i
    WHERE {_KINDS} AND i.occurred_at > :cutoff AND i.occurred_at <= :as_of"""
# The anti-join as a LEFT JOIN: PostgreSQL hashes it whatever its size, where
# NOT IN (subquery) falls back to a rescan per customer once the subquery
# outgrows work_mem (at 1M customers: minutes).
_RECENT_IDS = _RECENT.replace("SELECT i.customer_id", "SELECT DISTINCT i.customer_id", 1)

HAND_SQL: dict[str, dict[str, str]] = {
    "quiet_for": {
        # last activity <= cutoff: no engagement in (cutoff, as_of], and either some
        # engagement before (then the latest is <= cutoff) or a sign-up <= cutoff.
        "probes": f"SELECT c.id FROM customer c WHERE {_QUIET_PROBES}",
        "anti-join": f"""
            SELECT c.id FROM customer c LEFT JOIN ({_RECENT_IDS}) r ON r.customer_id = c.id
            WHERE c.created_at <= :as_of AND r.customer_id IS NULL
              AND (c.created_at <= :cutoff
                   OR EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                              AND i.occurred_at <= :cutoff AND {_ENGAGED}))
        """,
        "facts": """
            SELECT f.customer_id AS id FROM customer_facts f
            WHERE f.last_activity_at <= :cutoff AND f.created_at <= :as_of
        """,
    },
    "points_expiring": {
        "lots": """
            SELECT p.customer_id AS id FROM points_lot p JOIN customer c ON c.id = p.customer_id
            WHERE p.expires_at > :as_of AND p.expires_at <= :horizon
              AND p.earned_at <= :as_of AND p.remaining > 0 AND c.created_at <= :as_of
            GROUP BY p.customer_id
        """,
        "probes": """
            SELECT c.id FROM customer c
            WHERE c.created_at <= :as_of
              AND EXISTS (SELECT 1 FROM points_lot p WHERE p.customer_id = c.id
                          AND p.expires_at > :as_of AND p.expires_at <= :horizon
                          AND p.earned_at <= :as_of AND p.remaining > 0)
        """,
    },
    # + active within a year (engagement in [year_ago, as_of], or none at all and a
    # sign-up within the year), at least one order, one of three tiers. An order
    # exists, so some engagement exists, so "last activity" is the latest
    # engagement: created_at no longer matters (beyond <= as_of).
    "combined": {
        "probes": f"""
            SELECT c.id FROM customer c
            WHERE c.created_at <= :as_of AND c.tier IN ('silver', 'gold', 'platinum')
              AND NOT EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                              AND i.occurred_at > :cutoff AND i.occurred_at <= :as_of
                              AND {_ENGAGED})
              AND EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.kind = 'order' AND i.occurred_at <= :as_of)
              AND EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.occurred_at >= :year_ago AND i.occurred_at <= :cutoff
                          AND {_ENGAGED})
        """,
        "anti-join": f"""
            SELECT c.id FROM customer c LEFT JOIN ({_RECENT_IDS}) r ON r.customer_id = c.id
            WHERE c.created_at <= :as_of AND c.tier IN ('silver', 'gold', 'platinum')
              AND r.customer_id IS NULL
              AND EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.kind = 'order' AND i.occurred_at <= :as_of)
              AND EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.occurred_at >= :year_ago AND i.occurred_at <= :cutoff
                          AND {_ENGAGED})
        """,
        "facts": """
            SELECT f.customer_id AS id FROM customer_facts f JOIN customer c
              ON c.id = f.customer_id
            WHERE f.created_at <= :as_of AND f.last_activity_at <= :cutoff
              AND f.last_activity_at >= :year_ago AND f.orders >= 1
              AND c.tier IN ('silver', 'gold', 'platinum')
        """,
    },
}

# Counts only: quiet = signed up by the cutoff, minus those of them engaged since,
# plus the later sign-ups whose engagement before the cutoff makes them quiet.
COUNT_SQL: dict[str, dict[str, str]] = {
    "quiet_for": {
        "arithmetic": f"""
            SELECT (SELECT count(*) FROM customer c WHERE c.created_at <= :cutoff)
                 - (SELECT count(*) FROM customer c WHERE c.created_at <= :cutoff
                    AND c.id IN ({_RECENT}))
                 + (SELECT count(*) FROM customer c
                    WHERE c.created_at > :cutoff AND {_QUIET_PROBES})
        """,
    },
}


def _params(ctx: Context) -> dict[str, Any]:
    return {
        "as_of": ctx.now,
        "cutoff": ctx.now - timedelta(days=30),
        "horizon": ctx.now + timedelta(days=14),
        "year_ago": ctx.now - timedelta(days=365),
    }


def _sql(sql: str, ctx: Context) -> Any:
    used = {k: v for k, v in _params(ctx).items() if f":{k}" in sql}
    return text(sql).bindparams(*(bindparam(k, v, type_=UTCDateTime()) for k, v in used.items()))


def _stream_ids(ctx: Context, query: Any) -> list[str]:
    with ctx.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
        return [row[0] for row in result]


def _count(ctx: Context, query: Any) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


def _scalar(ctx: Context, query: Any) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _engage_ids(ctx: Context, audience: Any) -> list[str]:
    """What a caller of ``audience_ids`` does: check the facts, then stream."""
    with ctx.engine.connect() as conn:
        reading = facts_reading(conn, ctx.config, ctx.now)
    return _stream_ids(ctx, audience_ids(audience, ctx.config, ctx.now, facts=reading))


def run(ctx: Context, runs: int = 3) -> list[Result]:
    with ctx.engine.connect() as conn:
        facts = facts_reading(conn, ctx.config, ctx.now) == FACTS
    results = []
    for name, spec in AUDIENCES.items():
        audience = Audience.model_validate(spec)
        eng_count_s, eng_n = best_of(
            runs, partial(count_audience, ctx.engine, audience, ctx.config, ctx.now)
        )
        eng_ids_s, eng_ids = best_of(runs, partial(_engage_ids, ctx, audience))
        want = set(eng_ids)
        counts: dict[str, tuple[float, bool]] = {}
        ids: dict[str, tuple[float, bool]] = {}
        for ref, sql in HAND_SQL[name].items():
            if ref == "facts" and not facts:
                continue
            query = _sql(sql, ctx)
            seconds, n = best_of(runs, partial(_count, ctx, query.columns(column("id"))))
            counts[ref] = (seconds, n == eng_n)
            seconds, got = best_of(runs, partial(_stream_ids, ctx, query))
            ids[ref] = (seconds, set(got) == want and len(got) == len(want))
        for ref, sql in COUNT_SQL.get(name, {}).items():
            seconds, n = best_of(runs, partial(_scalar, ctx, _sql(sql, ctx)))
            counts[ref] = (seconds, n == eng_n)
        same = eng_n == len(want)
        for what, seconds, refs in (("count", eng_count_s, counts), ("ids", eng_ids_s, ids)):
            best = min(refs, key=lambda r: refs[r][0])
            ref_s = refs[best][0]
            ratio = seconds / ref_s if ref_s > 0 else None
            agree = same and all(ok for _, ok in refs.values())
            results.append(
                Result(
                    name=f"audience {name} ({what})",
                    figure=round(seconds, 6),
                    unit="s",
                    reference=round(ref_s, 6),
                    reference_label=f"fastest hand SQL ({best}), s",
                    target=f"ratio <= {MAX_RATIO}",
                    passed=agree and ratio is not None and ratio <= MAX_RATIO,
                    ratio=round(ratio, 2) if ratio is not None else None,
                    details={
                        "matched": eng_n,
                        "same_set_as_reference": agree,
                        "engage_read_facts": facts,
                        "references_s": {r: round(s, 6) for r, (s, _) in refs.items()},
                        "references_agree": {r: ok for r, (_, ok) in refs.items()},
                    },
                    load_avg=load_avg(),
                )
            )
        if name == "quiet_for":  # the target is SQLite's; PostgreSQL's figure is shown
            limit = QUIET_AT_1M_S * ctx.customers / 1_000_000
            sqlite = ctx.engine.dialect.name == "sqlite"
            results.append(
                Result(
                    name="audience quiet_for (count), 1 s at 1M customers on SQLite",
                    figure=round(eng_count_s, 6),
                    unit="s",
                    reference=round(limit, 6),
                    reference_label=f"{QUIET_AT_1M_S:g} s x customers / 1M, s",
                    target=f"< {limit:.3g} s" if sqlite else "(SQLite only)",
                    passed=(same and eng_count_s < limit) if sqlite else None,
                    ratio=round(eng_count_s / limit, 2) if limit > 0 else None,
                    details={"matched": eng_n, "customers": ctx.customers},
                    load_avg=load_avg(),
                )
            )
    return results
