"""The campaign file format (SPEC §3) as strict pydantic models.

Every model forbids unknown keys and is frozen. Values arrive from YAML with
dates kept as strings (see ``engage.yamlutil``), so dates, durations,
percentages and crontabs are parsed here by hand: that way each mistake
yields one readable message at the exact field, instead of pydantic's
per-union-member noise. Cross-field rules are field validators on the later
field, so their errors point at the line that has to change.
"""

from __future__ import annotations

import math
import re
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from ..config import Duration, Window, ZoneName
from ..timeutil import EARLIEST_DATE, LATEST_DATE, format_duration, parse_duration
from .cron import parse_crontab

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
TEMPLATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
UTM_KEYS = ("source", "medium", "campaign", "term", "content")


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration")
    return value


def _date(value: Any) -> Any:
    day = None
    if value is None:
        return value
    if isinstance(value, date):
        day = value
    elif isinstance(value, str):
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
                day = date.fromisoformat(value.strip())
        except ValueError:
            pass
    if day is None:
        raise ValueError(f"not a date: {value!r} (use YYYY-MM-DD)")
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ValueError(f"{day} is out of range: use a date from {EARLIEST_DATE} to {LATEST_DATE}")
    return day


def _cron(value: Any) -> Any:
    parse_crontab(value)  # raises ValueError with the reason
    return value


def _money(value: Any) -> Any:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected an amount such as 250 or 99.90, got {value!r}")
    try:
        amount = Decimal(str(value).strip())  # str(): 99.9 stays 99.9, not its binary cousin
    except InvalidOperation:
        raise ValueError(f"expected an amount such as 250 or 99.90, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"expected a non-negative amount, got {value!r}")
    if amount > MAX_MONEY:
        raise ValueError(f"expected an amount of at most {MAX_MONEY:,}, got {value!r}")
    return amount


def _fraction(value: Any) -> Any:
    """``10%``, ``"10%"`` or ``0.1`` -> 0.1; anything else or outside [0, 1) is an error."""
    bad = f"expected a share such as 10% or 0.1, got {value!r}"
    if isinstance(value, bool):
        raise ValueError(bad)
    if isinstance(value, str):
        text = value.strip()
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(bad) from None
    elif isinstance(value, int | float):
        share = float(value)
    else:
        raise ValueError(bad)
    if not math.isfinite(share) or not 0 <= share < 1:
        hint = " (write 10% or 0.1, not 10)" if share >= 1 and not str(value).endswith("%") else ""
        raise ValueError(f"must be at least 0% and below 100%{hint}, got {value!r}")
    return share


def _reentry(value: Any) -> Any:
    if value in ("once", "after_activity") or isinstance(value, timedelta):
        return value
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        if "too long" in str(exc):
            raise
        raise ValueError(
            f"expected once, after_activity or a duration such as 14d, got {value!r}"
        ) from None
    return _positive(duration)


_SCALARS = (str, int, float, bool)
# What the database can hold: money is NUMERIC(14, 2), counts and points are
# INTEGER; an attribute compared in SQL is at most a 64-bit integer. Beyond
# these a value would pass validate and then fail in the database.
MAX_MONEY = Decimal("999999999999.99")
MAX_COUNT = 2**31 - 1
_MAX_INT64 = 2**63 - 1


def _where(value: Any) -> Any:
    """Equality / membership on customer attributes; checked here for one clear message."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of attribute: value or attribute: [values]")
    for key, wanted in value.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"attribute names must be text, got {key!r}")
        if '"' in key:  # SQLite's JSON path cannot quote it: the query would fail at run time
            raise ValueError(f"attribute names cannot contain a double quote, got {key!r}")
        items = wanted if isinstance(wanted, list) else [wanted]
        if isinstance(wanted, list) and not wanted:
            raise ValueError(f"{key}: an empty list matches nobody")
        for item in items:
            if not isinstance(item, _SCALARS):
                raise ValueError(
                    f"{key}: expected text, a number, true/false or a list of those, got {item!r}"
                )
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > _MAX_INT64:
                raise ValueError(f"{key}: {item} is beyond a 64-bit whole number")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key}: expected a finite number, got {item!r}")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
CampaignDate = Annotated[date | None, BeforeValidator(_date)]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
Where = Annotated[dict[str, Scalar | list[Scalar]] | None, BeforeValidator(_where)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Schedule(_Strict):
    """When a campaign runs: a standard crontab in the campaign's zone, within date bounds."""

    cron: Annotated[StrictStr, BeforeValidator(_cron)]
    timezone: ZoneName
    start: CampaignDate = None
    end: CampaignDate = None

    @field_validator("end")
    @classmethod
    def _ordered(cls, end: date | None, info: ValidationInfo) -> date | None:
        start = info.data.get("start")
        if end is not None and start is not None and end < start:
            raise ValueError(f"end ({end}) is before start ({start})")
        return end


class Audience(_Strict):
    """Who a campaign is for. Every condition must hold; ``{}`` means every customer."""

    quiet_for: PositiveDuration | None = None
    active_within: PositiveDuration | None = None
    points_expiring_within: PositiveDuration | None = None
    min_expiring_points: StrictInt | None = Field(None, ge=1, le=MAX_COUNT)
    min_points_balance: StrictInt | None = Field(None, ge=0, le=MAX_COUNT)
    min_orders: StrictInt | None = Field(None, ge=0, le=MAX_COUNT)
    max_orders: StrictInt | None = Field(None, ge=0, le=MAX_COUNT)
    min_lifetime_value: Annotated[Decimal | None, BeforeValidator(_money)] = None
    tiers: list[StrictStr] | None = None
    where: Where = None
    signed_up_within: PositiveDuration | None = None
    last_order_within: PositiveDuration | None = None
    # Survey answers: the customer's latest NPS score (0-10) within nps_within.
    nps_at_most: StrictInt | None = Field(None, ge=0, le=10)
    nps_at_least: StrictInt | None = Field(None, ge=0, le=10)
    nps_within: PositiveDuration | None = None  # default 180d (audience.DEFAULT_NPS_WITHIN)

    @field_validator("active_within")
    @classmethod
    def _active_after_quiet(
        cls, active: timedelta | None, info: ValidationInfo
    ) -> timedelta | None:
        quiet = info.data.get("quiet_for")
        if active is not None and quiet is not None and active <= quiet:
            raise ValueError(
                f"must be longer than quiet_for ({format_duration(quiet)}), or nobody can match"
            )
        return active

    @field_validator("min_expiring_points")
    @classmethod
    def _needs_window(cls, minimum: int | None, info: ValidationInfo) -> int | None:
        if minimum is not None and "points_expiring_within" in info.data:
            if info.data["points_expiring_within"] is None:
                raise ValueError("only valid together with points_expiring_within")
        return minimum

    @field_validator("max_orders")
    @classmethod
    def _orders_range(cls, maximum: int | None, info: ValidationInfo) -> int | None:
        minimum = info.data.get("min_orders")
        if maximum is not None and minimum is not None and maximum < minimum:
            raise ValueError(f"must be at least min_orders ({minimum})")
        return maximum

    @field_validator("nps_at_least")
    @classmethod
    def _nps_range(cls, least: int | None, info: ValidationInfo) -> int | None:
        most = info.data.get("nps_at_most")
        if least is not None and most is not None and least > most:
            raise ValueError(f"must be at most nps_at_most ({most}), or nobody can match")
        return least

    @field_validator("nps_within")
    @classmethod
    def _nps_condition(cls, within: timedelta | None, info: ValidationInfo) -> timedelta | None:
        if within is not None and "nps_at_least" in info.data and "nps_at_most" in info.data:
            if info.data["nps_at_most"] is None and info.data["nps_at_least"] is None:
                raise ValueError("only valid together with nps_at_most or nps_at_least")
        return within

    @field_validator("tiers")
    @classmethod
    def _some_tiers(cls, tiers: list[str] | None) -> list[str] | None:
        if tiers is not None and not tiers:
            raise ValueError("an empty list matches nobody (leave tiers out to allow any tier)")
        return tiers


class Campaign(_Strict):
    """One campaign file. ``path`` is where it was loaded from, never a YAML key."""

    name: StrictStr
    description: StrictStr = ""
    enabled: StrictBool = True
    schedule: Schedule
    audience: Audience
    channels: list[Literal["email", "sms"]]
    template: StrictStr
    reentry: Annotated[Literal["once", "after_activity"] | timedelta, BeforeValidator(_reentry)] = (
        "after_activity"
    )
    holdout: Annotated[float, BeforeValidator(_fraction)] = 0.0
    priority: StrictInt = 50
    send_window: Window | None = None
    # A message not sent this long after its occurrence (windows, a backlog,
    # retries, downtime) is dropped as stale: state ``expired``.
    expires_after: PositiveDuration = timedelta(hours=24)
    exempt_from_frequency_cap: StrictBool = False
    utm: dict[StrictStr, StrictStr] | None = None
    transactional: StrictBool = False
    path: SkipJsonSchema[Path] = Field(default_factory=Path, exclude=True)

    @field_validator("audience", mode="before")
    @classmethod
    def _explicit_everyone(cls, audience: Any) -> Any:
        if audience is None:  # "audience:" with nothing under it
            raise ValueError("empty: list conditions, or write audience: {} to target everyone")
        return audience

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError(
                f"{name!r} is not a valid name (lowercase letters, digits, - and _, "
                "starting with a letter or digit, at most 100 characters)"
            )
        return name

    @field_validator("channels")
    @classmethod
    def _channels(cls, channels: list[str]) -> list[str]:
        if not channels:
            raise ValueError("list at least one channel: email, sms")
        if len(set(channels)) != len(channels):
            raise ValueError("each channel may appear only once")
        return channels

    @field_validator("template")
    @classmethod
    def _template_name(cls, template: str) -> str:
        if not TEMPLATE_RE.match(template) or ".." in template:
            raise ValueError(f"{template!r} is not a template folder name")
        return template

    @field_validator("utm")
    @classmethod
    def _utm_keys(cls, utm: dict[str, str] | None) -> dict[str, str] | None:
        for key in utm or {}:
            if key not in UTM_KEYS:
                raise ValueError(f"unknown UTM parameter {key!r} (use {', '.join(UTM_KEYS)})")
        return utm

    @property
    def marketing(self) -> bool:
        """Marketing messages need an unsubscribe link; transactional ones do not."""
        return not self.transactional
