"""A report as titled tables of text, for the terminal (and any plain page).

The CLI turns each ``Section`` into a Rich table; nothing here knows Rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .campaigns import MIN_HOLDOUT, CampaignFigures, Group
from .report import Report


@dataclass(frozen=True)
class Section:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    note: str = ""


def _n(value: int) -> str:
    return f"{value:,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _pp(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f} pp"


def _money(value: Decimal | None, currency: str) -> str:
    return "-" if value is None else f"{value:,.2f} {currency}"


def heading(report: Report) -> str:
    p = report.period
    if p.first_day and p.last_day:
        span = f"{p.first_day} to {p.last_day}"
    else:
        span = f"{p.start:%Y-%m-%d %H:%M} to {p.end:%Y-%m-%d %H:%M} UTC"
    partial = " (until now)" if p.partial else ""
    return f"Report for {span}{partial}, {p.zone.key}"


def sections(report: Report) -> list[Section]:
    shop, config = report.shop, report.config
    cur = config.shop.currency
    r, a, pu, pts, nps = shop.retention, shop.activity, shop.purchases, shop.points, shop.nps
    window = report.to_json()["settings"]["retention_window"]
    out = [
        Section(
            "Customers",
            ("figure", "value", "how"),
            [
                ("customers", _n(shop.customers.total), f"{_n(shop.customers.new)} signed up"),
                ("active customers", _n(a.active), f"{_n(a.previously_active)} the period before"),
                ("churn rate", _pct(a.churn_rate), f"{_n(a.churned)} of {_n(a.previously_active)}"),
                (
                    "retention rate",
                    _pct(r.rate),
                    f"(E {_n(r.at_end)} - N {_n(r.new_buyers)}) / S {_n(r.at_start)}",
                ),
                ("cohort retention", _pct(r.cohort_rate), f"{_n(r.retained)} of S"),
            ],
            note=f"S, E: customers with an order in the {window} before the start, the end; "
            "N: first order in the period",
        ),
        Section(
            "Purchases",
            ("figure", "value", "how"),
            [
                ("orders", _n(pu.orders), f"from {_n(pu.buyers)} buyers"),
                ("revenue", _money(pu.revenue, cur), ""),
                ("average order value", _money(pu.average_order_value, cur), "revenue / orders"),
                (
                    "purchase frequency",
                    "-" if pu.purchase_frequency is None else f"{pu.purchase_frequency:.2f}",
                    "orders / buyers",
                ),
                (
                    "repeat purchase rate",
                    _pct(pu.repeat_purchase_rate),
                    f"{_n(pu.repeat_buyers)} buyers with 2+ orders ever",
                ),
                (
                    "loyal customer rate",
                    _pct(pu.loyal_customer_rate),
                    f"{_n(pu.loyal_buyers)} buyers with {pu.loyal_min_orders}+ orders ever",
                ),
            ],
        ),
        Section(
            "Loyalty points",
            ("figure", "value", "how"),
            [
                ("earned", _n(pts.earned), ""),
                ("redeemed", _n(pts.redeemed), ""),
                ("expired", _n(pts.expired), "left on lots that expired in the period"),
                ("redemption rate", _pct(pts.redemption_rate), "redeemed / earned"),
            ],
        ),
        Section(
            "Net promoter score",
            ("figure", "value", "how"),
            [
                (
                    "NPS",
                    "-" if nps.score is None else f"{nps.score:+.2f}",
                    "% promoters - % detractors",
                ),
                ("answers", _n(nps.responses), "each customer's latest in the period"),
                ("promoters (9-10)", _n(nps.promoters), ""),
                ("passives (7-8)", _n(nps.passives), ""),
                ("detractors (0-6)", _n(nps.detractors), ""),
            ],
        ),
    ]
    if not report.campaigns:
        out.append(Section("Campaigns", ("campaign",), note="no campaign messages in the period"))
        return out
    columns = ("planned", "sent", "delivered", "bounced", "failed", "waiting", "held_out")
    out.append(
        Section(
            "Campaigns",
            ("campaign", *(c.replace("_", " ") for c in columns), "unsubscribed"),
            [
                (f.name, *(_n(f.funnel[c]) for c in columns), _n(f.unsubscribed))
                for f in report.campaigns
            ],
            note="messages whose planned send instant falls in the period",
        )
    )
    attribution = report.to_json()["settings"]["attribution_window"]
    out.append(
        Section(
            f"Conversions within {attribution} of the planned send",
            ("campaign", "recipients", "holdout", "lift (95% CI)", "relative", "incremental"),
            [_conversion_row(f, cur) for f in report.campaigns],
            note=_open_note(report.campaigns),
        )
    )
    return out


def _group(g: Group) -> str:
    if not g.members:
        return "-"
    return f"{_n(g.converted)}/{_n(g.members)} ({_pct(g.conversion_rate)})"


def _conversion_row(f: CampaignFigures, currency: str) -> tuple[str, ...]:
    lift = f.lift
    if lift.status == "ok":
        ci = f"{_pp(lift.absolute)} ({lift.low:+.2f} to {lift.high:+.2f})"
        relative = _pct(lift.relative) if lift.relative is not None else "-"
        incremental = _money(lift.incremental_revenue, currency)
    else:
        why: dict[str, Any] = {
            "no_holdout": "no holdout",
            "no_recipients": "nothing sent",
            "not_enough_data": f"not enough data (holdout {f.holdout.members} < {MIN_HOLDOUT})",
        }
        ci, relative, incremental = why[lift.status], "-", "-"
    return (f.name, _group(f.recipients), _group(f.holdout), ci, relative, incremental)


def _open_note(campaigns: list[CampaignFigures]) -> str:
    open_ = sum(f.windows_open for f in campaigns)
    base = "an order counts once per campaign, for the latest message whose window holds it"
    if open_:
        return f"{base}; {open_:,} messages' windows are still open: conversions may grow"
    return base
