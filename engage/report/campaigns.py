"""Per-campaign figures: the delivery funnel, and conversions of recipients
against the holdout with the lift they imply.

Which messages a period holds: those whose **planned send instant**
(``message.send_after`` as the planner wrote it; for held-out rows, the
instant the message would have gone out) falls in ``[start, end)``. The
planner computes that instant the same way for both groups from the
occurrence (``--at`` included), so a history built with ``engage send --at``
reports like one the daemon sent in real time, whose ``sent_at`` is the
wall clock.

Attribution (docs/report.md): an order of the customer in ``[planned send
instant, + attribution_window)`` converts the message. An order inside the
windows of several messages of one campaign counts once, for the latest of
them (last touch within the campaign); other campaigns count it too, each
against its own holdout. Recipients are the messages the provider accepted
(``sent``, ``delivered``, ``bounced``, ``undelivered``); the holdout is the
``held_out`` rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Select
from sqlalchemy.sql.functions import FunctionElement

from ..customers.facts import at_instant
from ..db.models import Interaction, Message, Suppression, UTCDateTime
from ..db.states import State
from .period import Period
from .shop import cents
from .stats import money, newcombe, percent, points, wilson

MSG, LOG, SUP = Message.__table__, Interaction.__table__, Suppression.__table__

# The provider accepted these: the customer was (very likely) reached.
REACHED = (State.SENT, State.DELIVERED, State.BOUNCED, State.UNDELIVERED)
GROUP_STATES = (*REACHED, State.HELD_OUT)
# Every state, spelled out: "status IN (all of them)" lets both databases read
# the (status, send_after) index one state at a time for the period's range.
ALL_STATES = tuple(State)
WAITING = (State.PLANNED, State.CLAIMED, State.SENDING, State.RETRY)
UNSUBSCRIBE_REASONS = ("unsubscribe", "sms_stop", "spam_report")
MIN_HOLDOUT = 30  # below this the holdout's rate is too unsteady to quote a lift


class shifted(FunctionElement[datetime]):
    """``instant + seconds`` in SQL: an interval on PostgreSQL; on SQLite, where
    instants are ``YYYY-MM-DD HH:MM:SS.ffffff`` text, the whole seconds are
    shifted by ``datetime()`` and the original fraction is put back, so the
    result compares exactly with stored instants."""

    type = UTCDateTime()
    inherit_cache = True
    name = "shifted"


@compiles(shifted, "postgresql")
def _shifted_pg(element: shifted, compiler: Any, **kw: Any) -> str:
    instant, seconds = list(element.clauses)
    return (
        f"({compiler.process(instant, **kw)} + make_interval(secs => "
        f"{compiler.process(seconds, **kw)}))"
    )


@compiles(shifted, "sqlite")
def _shifted_sqlite(element: shifted, compiler: Any, **kw: Any) -> str:
    instant, seconds = list(element.clauses)
    x, n = compiler.process(instant, **kw), compiler.process(seconds, **kw)
    return f"(datetime(substr({x}, 1, 19), '+' || {n} || ' seconds') || substr({x}, 20))"


def whole_seconds(window: timedelta) -> int:
    return window.days * 86_400 + window.seconds


def bucket_of(column: Any, marks: Sequence[datetime]) -> Any:
    """The index k of the bucket ``[marks[k], marks[k+1])`` holding ``column``
    (which must lie in ``[marks[0], marks[-1])``): a balanced CASE, so each
    row is compared with log2(buckets) boundaries."""

    def build(lo: int, hi: int) -> Any:
        if hi - lo == 1:
            return literal(lo, Integer)
        mid = (lo + hi) // 2
        return case((column < at_instant(marks[mid]), build(lo, mid)), else_=build(mid, hi))

    return build(0, len(marks) - 1)


def _named(query: Any, names: Sequence[str] | None, column: Any) -> Any:
    return query if names is None else query.where(column.in_(list(names)))


# --- statements ---------------------------------------------------------------------


def funnel_query(
    period: Period, marks: Sequence[datetime], names: Sequence[str] | None = None
) -> Select[Any]:
    """Messages per campaign, chart bucket and state, planned in the period."""
    bucket = bucket_of(MSG.c.send_after, marks).label("bucket")
    q = (
        select(MSG.c.campaign, bucket, MSG.c.status, func.count())
        .where(
            MSG.c.status.in_([s.value for s in ALL_STATES]),
            MSG.c.send_after >= at_instant(period.start),
            MSG.c.send_after < at_instant(period.end),
        )
        .group_by(MSG.c.campaign, bucket, MSG.c.status)
    )
    return _named(q, names, MSG.c.campaign)


def unsubscribes_query(period: Period, names: Sequence[str] | None = None) -> Select[Any]:
    """Opt-outs that a webhook or the unsubscribe page traced to a campaign's message."""
    q = (
        select(
            SUP.c.campaign,
            func.count(),
            func.sum(case((SUP.c.reason == "spam_report", 1), else_=0)),
        )
        .where(
            SUP.c.campaign.is_not(None),
            SUP.c.reason.in_(UNSUBSCRIBE_REASONS),
            SUP.c.created_at >= at_instant(period.start),
            SUP.c.created_at < at_instant(period.end),
        )
        .group_by(SUP.c.campaign)
    )
    return _named(q, names, SUP.c.campaign)


def conversions_query(
    period: Period,
    window: timedelta,
    marks: Sequence[datetime],
    now: datetime,
    names: Sequence[str] | None = None,
) -> Select[Any]:
    """Per campaign, group (``holdout`` 1/0) and bucket: members, converted
    members, attributed orders and their cents, and members whose window is
    still open at ``now``."""
    seconds = whole_seconds(window)
    held = case((MSG.c.status == State.HELD_OUT.value, 1), else_=0)
    members = _named(
        select(
            MSG.c.id,
            MSG.c.campaign,
            MSG.c.customer_id,
            MSG.c.send_after,
            held.label("holdout"),
            bucket_of(MSG.c.send_after, marks).label("bucket"),
        ).where(
            MSG.c.status.in_([s.value for s in GROUP_STATES]),
            MSG.c.send_after >= at_instant(period.start),
            MSG.c.send_after < at_instant(period.end),
        ),
        names,
        MSG.c.campaign,
    ).subquery("members")
    o = LOG.alias("o")
    later = MSG.alias("later")
    # Every attributed order, and every message that could take one from a
    # member, lies in [start, end + window): said outright, so that the
    # databases read that time range of the indexes rather than every order
    # or the whole outbox when they prefer a hash join.
    horizon = at_instant(period.end + timedelta(seconds=seconds))
    # A later message of the same campaign whose window also holds the order takes it.
    superseded = exists(
        select(literal(1)).where(
            later.c.campaign == members.c.campaign,
            later.c.customer_id == members.c.customer_id,
            later.c.status.in_([s.value for s in GROUP_STATES]),
            later.c.send_after >= at_instant(period.start),
            later.c.send_after < horizon,
            later.c.send_after <= o.c.occurred_at,
            or_(
                later.c.send_after > members.c.send_after,
                and_(later.c.send_after == members.c.send_after, later.c.id > members.c.id),
            ),
        )
    )
    attributed = (
        select(
            members.c.id,
            func.count().label("orders"),
            func.coalesce(func.sum(cents(o.c.amount)), 0).label("cents"),
        )
        .select_from(
            members.join(
                o,
                and_(
                    o.c.customer_id == members.c.customer_id,
                    o.c.kind == "order",
                    o.c.occurred_at >= members.c.send_after,
                    o.c.occurred_at < shifted(members.c.send_after, literal(seconds, Integer)),
                    o.c.occurred_at >= at_instant(period.start),
                    o.c.occurred_at < horizon,
                ),
            )
        )
        .where(~superseded)
        .group_by(members.c.id)
        .subquery("attributed")
    )
    open_ = members.c.send_after > at_instant(now - timedelta(seconds=seconds))
    return (
        select(
            members.c.campaign,
            members.c.holdout,
            members.c.bucket,
            func.count(),
            func.count(attributed.c.id),
            func.coalesce(func.sum(attributed.c.orders), 0),
            func.coalesce(func.sum(attributed.c.cents), 0),
            func.sum(case((open_, 1), else_=0)),
        )
        .select_from(members.outerjoin(attributed, attributed.c.id == members.c.id))
        .group_by(members.c.campaign, members.c.holdout, members.c.bucket)
    )


# --- figures ------------------------------------------------------------------------


@dataclass
class Group:
    """Recipients or holdout of one campaign: members are messages (one per
    customer and occurrence)."""

    members: int = 0
    converted: int = 0
    orders: int = 0
    revenue_cents: int = 0

    def add(self, members: int, converted: int, orders: int, cents_: int) -> None:
        self.members += members
        self.converted += converted
        self.orders += orders
        self.revenue_cents += cents_

    @property
    def conversion_rate(self) -> float | None:
        return percent(self.converted, self.members)

    def to_json(self) -> dict[str, Any]:
        low, high = wilson(self.converted, self.members) if self.members else (None, None)
        return {
            "members": self.members,
            "conversions": self.converted,
            "conversion_rate": self.conversion_rate,
            "conversion_rate_ci_low": None if low is None else points(low),
            "conversion_rate_ci_high": None if high is None else points(high),
            "orders": self.orders,
            "revenue": str(money(self.revenue_cents)),
        }


@dataclass(frozen=True)
class Lift:
    """Recipients' conversion rate minus the holdout's, in percentage points,
    with Newcombe's 95% interval; ``status`` says why there is none."""

    status: str  # ok | no_holdout | not_enough_data | no_recipients
    absolute: float | None = None  # percentage points
    low: float | None = None
    high: float | None = None
    relative: float | None = None  # percent of the holdout's rate
    incremental_revenue: Decimal | None = None

    @property
    def significant(self) -> bool | None:
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "absolute": self.absolute,
            "ci_low": self.low,
            "ci_high": self.high,
            "significant": self.significant,
            "relative": self.relative,
            "incremental_revenue": None
            if self.incremental_revenue is None
            else str(self.incremental_revenue),
        }


def lift_of(recipients: Group, holdout: Group, min_holdout: int = MIN_HOLDOUT) -> Lift:
    if holdout.members == 0:
        return Lift("no_holdout")
    if recipients.members == 0:
        return Lift("no_recipients")
    if holdout.members < min_holdout:
        return Lift("not_enough_data")
    d = newcombe(recipients.converted, recipients.members, holdout.converted, holdout.members)
    relative = None
    if holdout.converted:
        relative = float(
            round(
                Fraction(
                    recipients.converted * holdout.members, recipients.members * holdout.converted
                )
                * 100
                - 100,
                2,
            )
        )
    # What the recipients would have spent at the holdout's revenue per member.
    expected = Fraction(holdout.revenue_cents * recipients.members, holdout.members)
    return Lift(
        "ok",
        absolute=points(d.estimate),
        low=points(d.low),
        high=points(d.high),
        relative=relative,
        incremental_revenue=money(recipients.revenue_cents - expected),
    )


@dataclass
class CampaignFigures:
    name: str
    statuses: dict[str, int] = field(default_factory=dict)  # every state, for the period
    unsubscribed: int = 0
    spam_reports: int = 0
    recipients: Group = field(default_factory=Group)
    holdout: Group = field(default_factory=Group)
    windows_open: int = 0  # members whose attribution window has not closed yet
    series: list[dict[str, int]] = field(default_factory=list)  # per bucket

    def count(self, *states: State) -> int:
        return sum(self.statuses.get(s.value, 0) for s in states)

    @property
    def funnel(self) -> dict[str, int]:
        return {
            # Every message the planner decided to send, whatever became of it.
            "planned": sum(n for s, n in self.statuses.items() if s != State.HELD_OUT.value),
            "sent": self.count(*REACHED),
            "delivered": self.count(State.DELIVERED),
            "bounced": self.count(State.BOUNCED),
            "undelivered": self.count(State.UNDELIVERED),
            "failed": self.count(State.FAILED),
            "waiting": self.count(*WAITING),
            "held_out": self.count(State.HELD_OUT),
        }

    @property
    def lift(self) -> Lift:
        return lift_of(self.recipients, self.holdout)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.funnel,
            "unsubscribed": self.unsubscribed,
            "spam_reports": self.spam_reports,
            "statuses": dict(sorted(self.statuses.items())),
            "recipients": self.recipients.to_json(),
            "holdout": self.holdout.to_json(),
            "lift": self.lift.to_json(),
            "attribution_windows_open": self.windows_open,
            "series": self.series,
        }


SERIES_KEYS = ("planned", "sent", "delivered", "held_out", "conversions", "holdout_conversions")


def campaign_figures(
    conn: Connection,
    period: Period,
    window: timedelta,
    marks: Sequence[datetime],
    now: datetime,
    names: Sequence[str] | None = None,
) -> list[CampaignFigures]:
    """Every campaign with messages planned (or opt-outs recorded) in the
    period, or exactly ``names`` (zeros for those without any), by name."""
    buckets = len(marks) - 1
    out: dict[str, CampaignFigures] = {}

    def of(name: str) -> CampaignFigures:
        if name not in out:
            out[name] = CampaignFigures(
                name, series=[dict.fromkeys(SERIES_KEYS, 0) for _ in range(buckets)]
            )
        return out[name]

    for name in names or ():
        of(name)
    reached = {s.value for s in REACHED}
    for campaign, bucket, status, n in conn.execute(funnel_query(period, marks, names)):
        f = of(campaign)
        f.statuses[status] = f.statuses.get(status, 0) + n
        point = f.series[int(bucket)]
        if status == State.HELD_OUT.value:
            point["held_out"] += n
        else:
            point["planned"] += n
        if status in reached:
            point["sent"] += n
        if status == State.DELIVERED.value:
            point["delivered"] += n
    for campaign, n, spam in conn.execute(unsubscribes_query(period, names)):
        f = of(campaign)
        f.unsubscribed, f.spam_reports = int(n), int(spam or 0)
    for row in conn.execute(conversions_query(period, window, marks, now, names)):
        campaign, holdout, bucket, members, converted, orders, cents_, open_ = row
        f = of(campaign)
        group = f.holdout if holdout else f.recipients
        group.add(int(members), int(converted), int(orders), int(cents_))
        f.windows_open += int(open_ or 0)
        key = "holdout_conversions" if holdout else "conversions"
        f.series[int(bucket)][key] += int(converted)
    return [out[name] for name in sorted(out)]
