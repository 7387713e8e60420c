"""Audience selection through ``engage.campaigns.audience`` vs hand-written SQL.

For each audience two figures are taken, each beside its reference: the
count (``count_audience``) and the full id list streamed from the
``audience_ids`` select. The references are the fastest SQL I could write for
the same set on that backend (correlated ``NOT EXISTS`` probes on the
``(customer_id, occurred_at)`` index; a semi-join from the points lots that
expire in the window). The two sets are compared: a mismatch fails the row.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import bindparam, column, func, select, text

from engage.campaigns.audience import audience_ids, count_audience
from engage.campaigns.schema import Audience
from engage.db.models import UTCDateTime

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

# Engagement = every kind but email_open (the config default).
_ENGAGED = "i.kind <> 'email_open'"

HAND_SQL: dict[str, str] = {
    # last activity <= cutoff: no engagement in (cutoff, as_of], and either some
    # engagement before (then the latest is <= cutoff) or a sign-up <= cutoff.
    "quiet_for": f"""
        SELECT c.id FROM customer c
        WHERE c.created_at <= :as_of
          AND NOT EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.occurred_at > :cutoff AND i.occurred_at <= :as_of AND {_ENGAGED})
          AND (c.created_at <= :cutoff
               OR EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.occurred_at <= :cutoff AND {_ENGAGED}))
    """,
    "points_expiring": """
        SELECT p.customer_id AS id FROM points_lot p JOIN customer c ON c.id = p.customer_id
        WHERE p.expires_at > :as_of AND p.expires_at <= :horizon
          AND p.earned_at <= :as_of AND p.remaining > 0 AND c.created_at <= :as_of
        GROUP BY p.customer_id
    """,
    # + active within a year (engagement in [year_ago, as_of], or none at all and a
    # sign-up within the year), at least one order, one of three tiers.
    "combined": f"""
        SELECT c.id FROM customer c
        WHERE c.created_at <= :as_of AND c.tier IN ('silver', 'gold', 'platinum')
          AND NOT EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                          AND i.occurred_at > :cutoff AND i.occurred_at <= :as_of AND {_ENGAGED})
          AND EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                      AND i.kind = 'order' AND i.occurred_at <= :as_of)
          AND EXISTS (SELECT 1 FROM interaction i WHERE i.customer_id = c.id
                      AND i.occurred_at >= :year_ago AND i.occurred_at <= :cutoff AND {_ENGAGED})
    """,
}
# combined: an order exists, so some engagement exists, so "last activity" is the
# latest engagement: created_at no longer matters (beyond <= as_of).


def _hand(name: str, ctx: Context) -> Any:
    params = {
        "as_of": ctx.now,
        "cutoff": ctx.now - timedelta(days=30),
        "horizon": ctx.now + timedelta(days=14),
        "year_ago": ctx.now - timedelta(days=365),
    }
    sql = text(HAND_SQL[name])
    used = {k: v for k, v in params.items() if f":{k}" in HAND_SQL[name]}
    return sql.bindparams(*(bindparam(k, v, type_=UTCDateTime()) for k, v in used.items()))


def _stream_ids(ctx: Context, query: Any) -> list[str]:
    with ctx.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(query)
        return [row[0] for row in result]


def _count(ctx: Context, query: Any) -> int:
    with ctx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())


def run(ctx: Context, runs: int = 3) -> list[Result]:
    results = []
    for name, spec in AUDIENCES.items():
        audience = Audience.model_validate(spec)
        hand = _hand(name, ctx)
        query = audience_ids(audience, ctx.config, ctx.now)
        hand_count_s, hand_n = best_of(runs, partial(_count, ctx, hand.columns(column("id"))))
        eng_count_s, eng_n = best_of(
            runs, partial(count_audience, ctx.engine, audience, ctx.config, ctx.now)
        )
        hand_ids_s, hand_ids = best_of(runs, partial(_stream_ids, ctx, hand))
        eng_ids_s, eng_ids = best_of(runs, partial(_stream_ids, ctx, query))
        same = set(hand_ids) == set(eng_ids) and hand_n == eng_n == len(eng_ids)
        for what, seconds, ref in (
            ("count", eng_count_s, hand_count_s),
            ("ids", eng_ids_s, hand_ids_s),
        ):
            ratio = seconds / ref if ref > 0 else None
            results.append(
                Result(
                    name=f"audience {name} ({what})",
                    figure=round(seconds, 6),
                    unit="s",
                    reference=round(ref, 6),
                    reference_label="hand-written SQL, s",
                    target="ratio <= 2",
                    passed=same and ratio is not None and ratio <= 2.0,
                    ratio=round(ratio, 2) if ratio is not None else None,
                    details={"matched": eng_n, "same_set_as_reference": same},
                    load_avg=load_avg(),
                )
            )
    return results
