"""What a template sees: read-only views of the customer, points and campaign.

Templates get small frozen objects rather than ORM rows or the ``Recipient``
itself, so the sandbox exposes exactly the documented names (SPEC §4) and all
instants are already in the customer's time zone. Per-render facts the filters
need (locale, zone, now, currency, UTM) travel in the render context under
``RENDER_INFO_KEY``, never in module globals, so concurrent renders on several
dispatcher threads cannot see each other's customer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError

from ..config import Config
from ..customers.recipients import PointsSummary, Recipient
from ..timeutil import ensure_utc, get_zone
from .budget import RenderBudget

RENDER_INFO_KEY = "_engage_render"


@dataclass(frozen=True)
class CampaignInfo:
    """The campaign facts templates may use; built from any campaign-like object."""

    name: str
    description: str = ""
    template: str = ""
    utm: dict[str, str] | None = None
    transactional: bool = False

    @classmethod
    def of(cls, campaign: Any) -> CampaignInfo:
        """Accept a ``CampaignInfo``, the campaign schema object, or a mapping."""
        if isinstance(campaign, CampaignInfo):
            return campaign
        get = (
            campaign.get
            if isinstance(campaign, dict)
            else lambda k, d=None: getattr(campaign, k, d)
        )
        utm = get("utm", None)
        if utm is not None and not isinstance(utm, dict):
            utm = (
                dict(utm.model_dump(exclude_none=True)) if hasattr(utm, "model_dump") else dict(utm)
            )
        return cls(
            name=str(get("name")),
            description=get("description", "") or "",
            template=get("template", "") or "",
            utm={str(k): str(v) for k, v in utm.items() if v is not None} if utm else None,
            transactional=bool(get("transactional", False)),
        )


@dataclass(frozen=True)
class CustomerView:
    id: str
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None
    name: str  # first name, or a friendly fallback ("there": "Hi there")
    full_name: str
    tier: str | None
    locale: str
    timezone: str
    orders: int
    lifetime_value: Decimal
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PointsView:
    balance: int
    expiring: int
    next_expiry: datetime | None  # customer-local


@dataclass(frozen=True)
class RenderInfo:
    """Hidden per-render facts read by the ``@pass_context`` filters."""

    locale: Locale
    zone: tzinfo
    now: datetime  # customer-local
    currency: str
    utm: dict[str, str] | None
    budget: RenderBudget = field(default_factory=RenderBudget)  # this render's, mutable


NAME_FALLBACK = "there"


@lru_cache(maxsize=256)
def resolve_locale(name: str | None, default: str) -> Locale:
    """A Babel locale for customer data; bad data falls back instead of failing."""
    for candidate in (name, default, "en_US"):
        if not candidate:
            continue
        try:
            return Locale.parse(candidate.replace("-", "_"))
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    raise AssertionError("en_US is always available")  # pragma: no cover


@lru_cache(maxsize=1024)
def resolve_zone(name: str | None, default: str) -> ZoneInfo:
    for candidate in (name, default):
        if candidate:
            try:
                return get_zone(candidate)
            except ValueError:
                continue
    return ZoneInfo("UTC")


def customer_view(r: Recipient) -> CustomerView:
    first = (r.first_name or "").strip()
    last = (r.last_name or "").strip()
    return CustomerView(
        id=r.customer_id,
        email=r.email,
        phone=r.phone,
        first_name=r.first_name,
        last_name=r.last_name,
        name=first or NAME_FALLBACK,
        full_name=" ".join(x for x in (first, last) if x),
        tier=r.tier,
        locale=r.locale,
        timezone=r.timezone,
        orders=r.orders,
        lifetime_value=r.lifetime_value,
        attributes=dict(r.attributes or {}),
    )


def build_context(
    config: Config,
    campaign: CampaignInfo,
    recipient: Recipient,
    now: datetime,
    unsubscribe_url: str,
) -> dict[str, Any]:
    """The render context of SPEC §4 for one customer at one instant."""
    zone = resolve_zone(recipient.timezone, config.timezone)
    local_now = ensure_utc(now).astimezone(zone)
    last = ensure_utc(recipient.last_activity).astimezone(zone)
    pts = recipient.points
    expiry = ensure_utc(pts.next_expiry).astimezone(zone) if pts.next_expiry else None
    return {
        "customer": customer_view(recipient),
        "points": PointsView(pts.balance, pts.expiring, expiry),
        "last_activity": last,
        "days_quiet": max(0, (local_now - last) // timedelta(days=1)),
        "campaign": campaign,
        "shop": config.shop,
        "unsubscribe_url": unsubscribe_url,
        "now": local_now,
        RENDER_INFO_KEY: RenderInfo(
            locale=resolve_locale(recipient.locale, config.locale),
            zone=zone,
            now=local_now,
            currency=config.shop.currency,
            utm=campaign.utm,
            budget=RenderBudget(),
        ),
    }


def sample_recipient(config: Config, now: datetime) -> Recipient:
    """A realistic customer for ``engage validate`` and previews without data.

    It has points about to expire and the attributes the example templates
    use, so a template that works for it is likely to work for real customers.
    """
    now = ensure_utc(now)
    return Recipient(
        customer_id="sample-0001",
        email="alex.sample@example.com",
        phone="+15555550123",
        first_name="Alex",
        last_name="Sample",
        timezone=config.timezone,
        locale=config.locale,
        tier="gold",
        attributes={"discount_code": "COMEBACK10", "country": "US", "favorite_category": "Tea"},
        email_opt_in=True,
        sms_opt_in=True,
        created_at=now - timedelta(days=420),
        last_activity=now - timedelta(days=45),
        orders=4,
        lifetime_value=Decimal("312.40"),
        points=PointsSummary(balance=1250, expiring=300, next_expiry=now + timedelta(days=10)),
    )
