"""The report page's data: one plain structure, and where it comes from.

The seam: ``ReportSource`` is any function ``(engine, config, start, end,
zone) -> ReportData``. ``create_ui(..., report_source=...)`` takes one; the
default, ``library_report``, is ``engage report``'s own library with the
outbox's sends and deliveries per day; ``outbox_report`` fills in only what
the outbox says (messages by status per campaign, unsubscribes recorded
against a campaign, sends and deliveries per day) and leaves conversions,
lift and the shop figures empty, which the page says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, Table, func, select

from ...config import Config
from ...db.models import Message, Suppression
from ...db.states import State
from ...report.activity import FAILED, SENT, DayActivity, daily_activity, day_bounds


@dataclass(frozen=True)
class Group:
    """Recipients or holdout of one campaign: size and conversions, with a 95% CI
    on the conversion rate (fractions, 0..1)."""

    customers: int
    conversions: int
    rate: float | None = None
    ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class CampaignFigures:
    name: str
    planned: int = 0
    sent: int = 0
    delivered: int = 0
    bounced: int = 0
    failed: int = 0
    unsubscribed: int = 0
    held_out: int = 0
    recipients: Group | None = None  # None: conversions not measured by this source
    holdout: Group | None = None
    lift: float | None = None  # absolute, recipients' rate - holdout's rate (fraction)
    lift_ci: tuple[float, float] | None = None
    relative_lift: float | None = None
    revenue: Decimal | None = None  # attributed (or incremental) revenue
    note: str | None = None  # e.g. "not enough data" for a small holdout


@dataclass(frozen=True)
class Figure:
    """One shop figure: ``value`` in ``unit`` ("%", "money", "count", "ratio")."""

    key: str
    label: str
    value: float | Decimal | int | None
    unit: str = "count"


@dataclass(frozen=True)
class SeriesPoint:
    day: date
    value: float | Decimal | None


@dataclass
class ReportData:
    start: datetime
    end: datetime
    campaigns: list[CampaignFigures] = field(default_factory=list)
    shop: list[Figure] = field(default_factory=list)
    daily: list[DayActivity] = field(default_factory=list)
    # Optional series over the period, drawn when present: "retention", "aov".
    series: dict[str, list[SeriesPoint]] = field(default_factory=dict)
    source: str = "outbox"  # what produced it, shown on the page
    complete: bool = False  # False: conversions, lift and shop figures are not measured


ReportSource = Callable[[Engine, Config, datetime, datetime, ZoneInfo], ReportData]

M = cast(Table, Message.__table__)
S = cast(Table, Suppression.__table__)


def outbox_report(
    engine: Engine, config: Config, start: datetime, end: datetime, zone: ZoneInfo
) -> ReportData:
    """What the outbox says about ``[start, end)``: per campaign, the messages whose
    send (or, for the control group, planned send) instant falls in the period."""
    when = func.coalesce(M.c.sent_at, M.c.send_after)
    q = (
        select(M.c.campaign, M.c.status, func.count())
        .where(when >= start, when < end)
        .group_by(M.c.campaign, M.c.status)
    )
    unsub = (
        select(S.c.campaign, func.count())
        .where(
            S.c.campaign.is_not(None),
            S.c.reason.in_(("unsubscribe", "spam_report", "sms_stop")),
            S.c.created_at >= start,
            S.c.created_at < end,
        )
        .group_by(S.c.campaign)
    )
    by_campaign: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for campaign, status, n in conn.execute(q):
            by_campaign.setdefault(campaign, {})[status] = int(n)
        unsubscribed = {c: int(n) for c, n in conn.execute(unsub)}
    figures = []
    for name in sorted(set(by_campaign) | set(unsubscribed)):
        st = by_campaign.get(name, {})
        total = sum(st.values())
        figures.append(
            CampaignFigures(
                name=name,
                planned=total - st.get(State.HELD_OUT, 0),
                sent=sum(st.get(s, 0) for s in SENT),
                delivered=st.get(State.DELIVERED, 0),
                bounced=st.get(State.BOUNCED, 0) + st.get(State.UNDELIVERED, 0),
                failed=sum(st.get(s, 0) for s in FAILED),
                unsubscribed=unsubscribed.get(name, 0),
                held_out=st.get(State.HELD_OUT, 0),
            )
        )
    first = start.astimezone(zone).date()
    last = _last_day(end, zone)
    return ReportData(
        start=start,
        end=end,
        campaigns=figures,
        daily=daily_activity(engine, first, last, zone),
        source="outbox",
        complete=False,
    )


def _last_day(end: datetime, zone: ZoneInfo) -> date:
    """The last local day that ``[.., end)`` touches."""
    local = end.astimezone(zone)
    day = local.date()
    if local.time() == datetime.min.time():
        day = date.fromordinal(day.toordinal() - 1)
    return day


def period(first: date, last: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """``[local midnight of first, local midnight after last)`` as UTC instants."""
    bounds = day_bounds(first, last, zone)
    return bounds[0], bounds[-1]


def as_json(data: ReportData) -> dict[str, Any]:
    """A plain-JSON view (for tests and for a future JSON endpoint)."""
    from dataclasses import asdict

    return cast(dict[str, Any], asdict(data))


# -- the report library ------------------------------------------------------------

_SHOP_FIGURES = (  # (section, key, label, unit) of `engage report --json`, in page order
    ("customers", "total", "Customers", "count"),
    ("customers", "new", "New customers", "count"),
    ("activity", "active", "Active customers", "count"),
    ("retention", "rate", "Customer retention rate", "%"),
    ("retention", "cohort_rate", "Cohort retention", "%"),
    ("activity", "churn_rate", "Churn rate", "%"),
    ("purchases", "orders", "Orders", "count"),
    ("purchases", "revenue", "Revenue", "money"),
    ("purchases", "average_order_value", "Average order value", "money"),
    ("purchases", "purchase_frequency", "Purchase frequency", "ratio"),
    ("purchases", "repeat_purchase_rate", "Repeat purchase rate", "%"),
    ("purchases", "loyal_customer_rate", "Loyal customer rate", "%"),
    ("points", "earned", "Points earned", "count"),
    ("points", "redeemed", "Points redeemed", "count"),
    ("points", "expired", "Points expired", "count"),
    ("points", "redemption_rate", "Redemption rate", "%"),
    ("nps", "score", "Net promoter score", "ratio"),
    ("nps", "responses", "Survey answers", "count"),
)
_LIFT_NOTES = {
    "no_holdout": "no holdout: no lift",
    "not_enough_data": "not enough data (holdout under 30)",
    "no_recipients": "nothing sent",
}


def library_report(
    engine: Engine, config: Config, start: datetime, end: datetime, zone: ZoneInfo
) -> ReportData:
    """The report page's data from ``engage report``'s own library: every figure
    the CLI prints for the same local days, plus the outbox's daily activity."""
    from ...report import Period, build_report
    from ...timeutil import utcnow

    first, last = start.astimezone(zone).date(), _last_day(end, zone)
    report = build_report(engine, config, Period.of_days(first, last, zone, utcnow()), utcnow())
    doc = report.to_json()
    shop = [
        Figure(f"{section}.{key}", label, _number(doc["shop"][section][key]), unit)
        for section, key, label, unit in _SHOP_FIGURES
    ]
    campaigns = [_campaign(c) for c in doc["campaigns"]]
    series = {
        "aov": [
            SeriesPoint(_local_day(b["start"], zone), _number(b["average_order_value"]))
            for b in doc["series"]["buckets"]
        ]
    }
    return ReportData(
        start=report.period.start,
        end=report.period.end,
        campaigns=campaigns,
        shop=shop,
        daily=daily_activity(engine, first, last, zone),
        series=series,
        source="engage report",
        complete=True,
    )


def _campaign(c: dict[str, Any]) -> CampaignFigures:
    lift = c["lift"]
    ok = lift["status"] == "ok"
    return CampaignFigures(
        name=c["name"],
        planned=c["planned"],
        sent=c["sent"],
        delivered=c["delivered"],
        bounced=c["bounced"] + c["undelivered"],
        failed=c["failed"],
        unsubscribed=c["unsubscribed"],
        held_out=c["held_out"],
        recipients=_group(c["recipients"]),
        holdout=_group(c["holdout"]) if c["holdout"]["members"] else None,
        lift=lift["absolute"] / 100 if ok else None,
        lift_ci=(lift["ci_low"] / 100, lift["ci_high"] / 100) if ok else None,
        relative_lift=lift["relative"] / 100 if ok and lift["relative"] is not None else None,
        revenue=Decimal(lift["incremental_revenue"]) if ok and lift["incremental_revenue"]
        else Decimal(c["recipients"]["revenue"]),
        note=_LIFT_NOTES.get(lift["status"]),
    )


def _group(g: dict[str, Any]) -> Group:
    rate = g["conversion_rate"]
    return Group(
        customers=g["members"],
        conversions=g["conversions"],
        rate=rate / 100 if rate is not None else None,
        ci=(g["conversion_rate_ci_low"] / 100, g["conversion_rate_ci_high"] / 100)
        if g.get("conversion_rate_ci_low") is not None
        else None,
    )


def _local_day(instant: str, zone: ZoneInfo) -> date:
    return datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(zone).date()


def _number(value: Any) -> float | Decimal | int | None:
    if isinstance(value, str):
        return Decimal(value)
    return cast(float | int | None, value)
