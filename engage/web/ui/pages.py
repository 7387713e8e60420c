"""The page handlers: read the query, call the library, render a template.

Each runs in a worker thread (they query the database) and reads the clock
once. Nothing here decides anything the CLI would decide differently: the
calendar is ``campaigns.cron.occurrences`` + ``count_audience``, the dry run
and the preview are ``planning.preview``, the timeline is
``report.timeline``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import phonenumbers
from jinja2 import Environment
from sqlalchemy import func, or_, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ...campaigns.audience import audience_ids
from ...campaigns.cron import occurrences
from ...campaigns.loader import display_path
from ...campaigns.schema import Campaign
from ...db.models import Customer
from ...errors import EngageError, NotFound, Problem
from ...planning.policy import REASONS
from ...planning.preview import decide_for_customer, dry_run_campaign, preview_message
from ...report.activity import occurrence_outcomes, recent_outcomes
from ...report.timeline import customer_timeline
from ...templating.renderer import Renderer
from ...timeutil import format_duration, get_zone, isoformat_z, parse_instant
from . import charts
from .calendar_view import fill as fill_calendar
from .calendar_view import first_weekday, make_grid
from .report import period
from .security import PREVIEW_CSP

if TYPE_CHECKING:
    from .app import UI

COMMON_ZONES = (
    "UTC",
    "America/Los_Angeles",
    "America/Denver",
    "America/Chicago",
    "America/New_York",
    "America/Sao_Paulo",
    "Europe/London",
    "Europe/Paris",
    "Europe/Berlin",
    "Africa/Johannesburg",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
)


# -- formatting --------------------------------------------------------------
def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _when(value: datetime | None, zone: Any = None, fmt: str = "%b %-d, %Y %H:%M %Z") -> str:
    if value is None:
        return "–"
    if isinstance(zone, str):
        zone = get_zone(zone)
    return (value.astimezone(zone) if zone is not None else value).strftime(fmt)


def _age(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    seconds = max(int((now - value).total_seconds()), 0)
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _money(value: Any, currency: str = "") -> str:
    if value is None:
        return "–"
    amount = Decimal(value).quantize(Decimal("0.01"))
    return f"{amount:,} {currency}".strip()


def install_filters(env: Environment) -> None:
    env.filters.update(num=_num, pct=_pct, when=_when, money=_money, iso=isoformat_z)
    env.globals.update(duration=format_duration)


# -- shared bits ---------------------------------------------------------------
def _now(ui: UI) -> datetime:
    return ui.clock()


def _instant(ui: UI, text: str | None, default: datetime) -> datetime:
    """``?at=`` as ``--at`` reads it: ISO date or datetime, naive = config zone."""
    if not text or not text.strip():
        return default
    try:
        return parse_instant(text, ui.config.zone)
    except ValueError as exc:
        raise HTTPException(400, f"at: {exc}") from None


def _zone(ui: UI, text: str | None) -> tuple[str, Any]:
    name = (text or ui.config.timezone).strip()
    try:
        return name, get_zone(name)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def _day(text: str | None, default: date) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text.strip()[:10])
    except ValueError:
        raise HTTPException(400, f"not a date: {text!r} (use YYYY-MM-DD)") from None


def _local_input(value: datetime, zone: Any) -> str:
    """A value for ``<input type=datetime-local>`` in ``zone``."""
    return value.astimezone(zone).strftime("%Y-%m-%dT%H:%M")


# -- calendar ------------------------------------------------------------------
def calendar(ui: UI, request: Request) -> Response:
    q = request.query_params
    now = _now(ui)
    view = q.get("view", "month")
    if view not in ("month", "week"):
        raise HTTPException(400, "view must be month or week")
    zone_name, zone = _zone(ui, q.get("tz"))
    today = now.astimezone(zone).date()
    anchor = _day(q.get("date"), today)
    grid = make_grid(view, anchor, zone, first_weekday(ui.config.locale), today)
    loaded = ui.campaigns.load()
    palette = ui.campaigns.palette()
    outcomes = occurrence_outcomes(ui.engine, grid.start, grid.end)
    upcoming = fill_calendar(grid, loaded.campaigns, outcomes, now, palette)
    by_name = {c.name: c for c in loaded.campaigns}
    found = ui.estimates.lookup(
        [(by_name[e.campaign], e.at) for e in upcoming], wait=ui.estimate_wait
    )
    for e in upcoming:
        e.estimate = found.get(e.key) if e.key else None
    pending = sum(1 for e in upcoming if e.pending)
    oldest = min((e.estimate.computed_at for e in upcoming if e.estimate), default=None)
    zones = sorted(
        {ui.config.timezone, zone_name, *COMMON_ZONES,
         *(c.schedule.timezone for c in loaded.campaigns)}
    )
    legend = [(c, palette.get(c.name, 0)) for c in loaded.campaigns]
    return ui.render(
        request,
        "calendar.html",
        grid=grid,
        view=view,
        zone_name=zone_name,
        zones=zones,
        now=now,
        today=today,
        legend=legend,
        broken=loaded.failed_files,
        problems=loaded.errors,
        pending=pending,
        estimates_age=_age(oldest, now) if oldest else None,
        estimate_ttl=format_duration(ui.estimates.ttl),
        nav=lambda d, v=view: _calendar_link(d, v, zone_name, ui.config.timezone),
    )


def _calendar_link(day: date, view: str, zone: str, default_zone: str) -> str:
    params = {"view": view, "date": day.isoformat()}
    if zone != default_zone:
        params["tz"] = zone
    return "/?" + "&".join(f"{k}={v}" for k, v in params.items())


# -- campaigns -------------------------------------------------------------------
def campaign_list(ui: UI, request: Request) -> Response:
    now = _now(ui)
    loaded = ui.campaigns.load()
    palette = ui.campaigns.palette()
    rows = []
    for c in loaded.campaigns:
        nxt = next(occurrences(c, now, now + timedelta(days=400)), None) if c.enabled else None
        rows.append((c, palette.get(c.name, 0), nxt))
    broken = [(display_path(p), p.stem) for p in loaded.failed_files]
    return ui.render(
        request, "campaigns.html", rows=rows, broken=broken, problems=loaded.problems,
        zone=ui.config.zone,
    )


@dataclass
class CampaignSource:
    """A campaign file: its text, the campaign if it loaded, and its problems."""

    name: str
    path: str  # as problems show it (relative to the working directory)
    shown: str  # relative to the project folder, for the heading
    text: str
    campaign: Campaign | None
    problems: list[Problem]


def _find_campaign(ui: UI, name: str) -> CampaignSource:
    loaded = ui.campaigns.load()
    for c in loaded.campaigns:
        if c.name == name:
            shown = display_path(c.path)
            problems = [p for p in loaded.problems if p.path == shown]
            return CampaignSource(name, shown, _project(ui, c.path), _read(c.path), c, problems)
    for path in loaded.failed_files:  # a file that does not load: show it with its errors
        if path.stem == name:
            shown = display_path(path)
            problems = [p for p in loaded.problems if p.path == shown]
            return CampaignSource(name, shown, _project(ui, path), _read(path), None, problems)
    raise HTTPException(404, f"no campaign named {name!r}")


def _project(ui: UI, path: Any) -> str:
    try:
        return str(path.resolve().relative_to(ui.config.base_dir.resolve()))
    except (ValueError, OSError):
        return str(path)


def _read(path: Any) -> str:
    try:
        return str(path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"


def _random_customer(ui: UI, campaign: Campaign, at: datetime) -> str | None:
    """A customer of the audience at ``at`` (any customer when it is empty)."""
    ids = audience_ids(campaign.audience, ui.config, at)
    c = Customer.__table__.c
    with ui.engine.connect() as conn:
        found = conn.execute(ids.order_by(func.random()).limit(1)).scalar()
        if found is None:
            found = conn.execute(select(c.id).order_by(func.random()).limit(1)).scalar()
    return str(found) if found is not None else None


def campaign(ui: UI, request: Request) -> Response:
    q = request.query_params
    now = _now(ui)
    src = _find_campaign(ui, request.path_params["name"])
    camp = src.campaign
    zone_name, zone = _zone(ui, q.get("tz"))
    ctx: dict[str, Any] = {
        "src": src,
        "camp": camp,
        "zone": zone,
        "zone_name": zone_name,
        "now": now,
        "colour": ui.campaigns.palette().get(src.name, 0),
    }
    if camp is None:
        return ui.render(request, "campaign.html", **ctx)
    problems = list(src.problems)
    problems += [
        p for p in Renderer(ui.config).check([camp], now=now)
        if f"/{camp.template}/" in f"/{p.path}/" or "/_layouts/" in p.path
        or p.path == "config.yaml"
    ]
    ctx["problems"] = problems
    ctx["next"] = list(itertools.islice(occurrences(camp, now, now + timedelta(days=800)), 8))
    ctx["runs"] = recent_outcomes(ui.engine, camp.name, 10)

    at = _instant(ui, q.get("at"), now)
    ctx["at"] = at
    ctx["at_input"] = _local_input(at, ui.config.zone) if q.get("at") else ""
    ctx["dry"] = None
    if q.get("dry"):
        render = q.get("render", "") in ("1", "on", "true")
        report = dry_run_campaign(ui.engine, ui.config, camp, at, limit=25, render=render)
        ctx["dry"] = report
        ctx["dry_render"] = render
        ctx["dry_bars"] = charts.bars(_reason_items(report.counts))
    customer_id = (q.get("customer") or "").strip()
    if q.get("random"):
        customer_id = _random_customer(ui, camp, at) or ""
        if not customer_id:
            ctx["preview_error"] = "There are no customers to preview with."
    channel = q.get("channel") or None
    if channel not in (None, "email", "sms"):
        raise HTTPException(400, "channel must be email or sms")
    ctx["customer_id"] = customer_id
    ctx["channel"] = channel
    ctx["preview"] = None
    if customer_id:
        try:
            p = preview_message(ui.engine, ui.config, camp, customer_id, at, channel=channel)
        except NotFound as exc:
            ctx["preview_error"] = str(exc)
        except EngageError as exc:  # a template that does not render: file:line and why
            ctx["preview_error"] = str(exc)
        else:
            ctx["preview"] = p
            frame = {"customer": customer_id, "at": isoformat_z(at)}
            if p.channel:
                frame["channel"] = p.channel
            ctx["frame_query"] = frame
    return ui.render(request, "campaign.html", **ctx)


def _reason_items(counts: Counter[str]) -> list[tuple[str, int, str]]:
    items: list[tuple[str, int, str]] = []
    for key, n in counts.items():
        if key.startswith("send_"):
            items.append((f"send by {key[5:]}", n, "send"))
        elif key == "render_error":
            items.append(("render error", n, "error"))
        elif key in REASONS:
            items.append((key.replace("_", " "), n, "skip"))
    return items


def preview_html(ui: UI, request: Request) -> Response:
    """The email's HTML exactly as rendered, for the sandboxed iframe."""
    q = request.query_params
    src = _find_campaign(ui, request.path_params["name"])
    if src.campaign is None:
        raise HTTPException(404, f"campaign {src.name!r} does not load")
    customer_id = (q.get("customer") or "").strip()
    if not customer_id:
        raise HTTPException(400, "customer is required")
    at = _instant(ui, q.get("at"), _now(ui))
    try:
        p = preview_message(ui.engine, ui.config, src.campaign, customer_id, at, channel="email")
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    assert p.email is not None
    return Response(
        p.email.html.encode("utf-8"),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": PREVIEW_CSP,
            "X-Frame-Options": "SAMEORIGIN",
            "Cache-Control": "no-store",
        },
    )


# -- customers -------------------------------------------------------------------
def _search(ui: UI, text: str) -> list[Any]:
    c = Customer.__table__.c
    conds = [c.id == text]
    if "@" in text:
        conds += [c.email == text, c.email == text.lower()]
    try:
        number = phonenumbers.parse(text, ui.config.default_phone_region)
        if phonenumbers.is_possible_number(number):
            conds.append(
                c.phone == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            )
    except phonenumbers.NumberParseException:
        pass
    with ui.engine.connect() as conn:
        return list(
            conn.execute(
                select(c.id, c.first_name, c.last_name, c.email, c.phone, c.tier)
                .where(or_(*conds))
                .order_by(c.id)
                .limit(50)
            )
        )


def customer_search(ui: UI, request: Request) -> Response:
    text = (request.query_params.get("q") or "").strip()
    results = _search(ui, text) if text else []
    if len(results) == 1:
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/customers/{quote(results[0].id, safe='')}", 303)
    return ui.render(request, "customers.html", q=text, results=results)


def customer(ui: UI, request: Request) -> Response:
    cid = request.path_params["customer_id"]
    now = _now(ui)
    zone_name, zone = _zone(ui, request.query_params.get("tz"))
    try:
        timeline = customer_timeline(ui.engine, ui.config, cid, now, limit=50)
    except NotFound:
        raise HTTPException(404, f"no customer {cid!r}") from None
    loaded = ui.campaigns.load()
    enabled = [c for c in loaded.campaigns if c.enabled]
    decisions = decide_for_customer(ui.engine, ui.config, enabled, cid, now)
    palette = ui.campaigns.palette()
    events = sorted(
        [("interaction", i["occurred_at"], i) for i in timeline.interactions]
        + [("message", m["sent_at"] or m["send_after"], m) for m in timeline.messages]
        + [("suppression", s["created_at"], s) for s in timeline.suppressions],
        key=lambda e: e[1],
        reverse=True,
    )
    return ui.render(
        request,
        "customer.html",
        t=timeline,
        r=timeline.recipient,
        events=events,
        decisions=decisions,
        palette=palette,
        zone=zone,
        zone_name=zone_name,
        customer_zone=get_zone(timeline.recipient.timezone),
        now=now,
    )


# -- report --------------------------------------------------------------------------
def report(ui: UI, request: Request) -> Response:
    q = request.query_params
    now = _now(ui)
    zone_name, zone = _zone(ui, q.get("tz"))
    today = now.astimezone(zone).date()
    last = _day(q.get("to"), today)
    first = _day(q.get("from"), last - timedelta(days=29))
    if first > last:
        raise HTTPException(400, "from must not be after to")
    if (last - first).days > 366 * 3:
        raise HTTPException(400, "choose a period of at most three years")
    start, end = period(first, last, zone)
    data = ui.report_source(ui.engine, ui.config, start, end, zone)
    daily = charts.columns(
        [d.day for d in data.daily],
        [[d.sent for d in data.daily], [d.delivered for d in data.daily]],
    )
    conv_rows: list[tuple[str, str, float, tuple[float, float] | None]] = []
    lift_rows: list[tuple[str, str, float, tuple[float, float] | None]] = []
    for c in data.campaigns:
        for label, g in (("recipients", c.recipients), ("holdout", c.holdout)):
            if g is not None and g.rate is not None:
                conv_rows.append((f"{c.name} · {label}", label, g.rate, g.ci))
        if c.lift is not None:
            lift_rows.append((c.name, "lift", c.lift, c.lift_ci))
    series = {
        key: charts.line([p.day for p in pts], [p.value for p in pts],
                         unit="%" if key == "retention" else "")
        for key, pts in data.series.items()
    }
    return ui.render(
        request,
        "report.html",
        data=data,
        first=first,
        last=last,
        zone_name=zone_name,
        daily=daily,
        totals=(sum(d.sent for d in data.daily), sum(d.delivered for d in data.daily)),
        conv=charts.intervals(conv_rows) if conv_rows else None,
        lift=charts.intervals(lift_rows, symmetric=True) if lift_rows else None,
        series=series,
        currency=ui.config.shop.currency,
        now=now,
    )
