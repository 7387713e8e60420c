"""Row validation: raw CSV cells or JSON values -> typed import records.

Every parser here is pure and raises ``RowInvalid(field, why)`` on bad input,
so one bad value rejects one row and never a batch. "Not given" is the same
thing in both formats: an empty CSV cell, a missing JSON key or ``null``.
An update leaves a field that is not given unchanged (SPEC §9, idempotent
upserts), which is why parsers return ``None`` rather than a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from ..timeutil import get_zone, parse_instant

KINDS = ("customers", "interactions", "points")

# The customer columns an import may set (besides ``id`` and ``attributes``).
CUSTOMER_FIELDS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "timezone",
    "locale",
    "tier",
    "email_opt_in",
    "sms_opt_in",
    "created_at",
)
CUSTOMER_COLUMNS = frozenset({"id", *CUSTOMER_FIELDS, "attributes"})
INTERACTION_COLUMNS = frozenset(
    {"customer_id", "kind", "occurred_at", "amount", "external_id", "attributes"}
)
POINTS_INSTANT_COLUMNS = ("earned_at", "redeemed_at", "occurred_at")
POINTS_COLUMNS = frozenset(
    {"customer_id", "points", "expires_at", "external_id", *POINTS_INSTANT_COLUMNS}
)
COLUMNS = {
    "customers": CUSTOMER_COLUMNS,
    "interactions": INTERACTION_COLUMNS,
    "points": POINTS_COLUMNS,
}
# Columns a CSV header must have; a tuple means "one of these".
REQUIRED: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "customers": ("id",),
    "interactions": ("customer_id", "kind", "occurred_at"),
    "points": ("customer_id", "points", POINTS_INSTANT_COLUMNS),
}

_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_MAX_MONEY = Decimal(10) ** 12
_MAX_POINTS = 2**31 - 1
_CENT = Decimal("0.01")


class RowInvalid(ValueError):
    """One row cannot be imported: which field, and why."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


@dataclass(slots=True)
class CustomerRec:
    id: str
    fields: dict[str, Any]  # only the columns the row gives
    attributes: dict[str, Any]


@dataclass(slots=True)
class InteractionRec:
    customer_id: str
    kind: str
    occurred_at: datetime
    amount: Decimal | None
    external_id: str
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EarnRec:
    customer_id: str
    points: int
    earned_at: datetime
    expires_at: datetime
    external_id: str


@dataclass(slots=True)
class RedeemRec:
    customer_id: str
    points: int  # positive: how many points this redemption consumes
    redeemed_at: datetime
    external_id: str


Record = CustomerRec | InteractionRec | EarnRec | RedeemRec


def given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(value: Any, name: str, maxlen: int, *, numbers: bool = False) -> str | None:
    if not given(value):
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowInvalid(name, f"expected text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > maxlen:
        raise RowInvalid(name, f"longer than {maxlen} characters")
    if "\x00" in value:
        raise RowInvalid(name, "contains a NUL character")
    return value


def required_id(value: Any, name: str, maxlen: int = 64) -> str:
    out = _text(value, name, maxlen, numbers=True)
    if out is None:
        raise RowInvalid(name, "required")
    return out


def parse_email(value: Any) -> str | None:
    raw = _text(value, "email", 320)
    if raw is None:
        return None
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise RowInvalid("email", f"not a valid address {raw!r}: {exc}") from None


def parse_phone(value: Any, region: str) -> str | None:
    raw = _text(value, "phone", 64, numbers=True)
    if raw is None:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise RowInvalid("phone", f"not a phone number {raw!r}: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise RowInvalid("phone", f"not a valid phone number {raw!r} (default region {region})")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def parse_zone(value: Any) -> str | None:
    raw = _text(value, "timezone", 64)
    if raw is None:
        return None
    try:
        get_zone(raw)
    except ValueError as exc:
        raise RowInvalid("timezone", str(exc)) from None
    return raw


def parse_locale(value: Any) -> str | None:
    raw = _text(value, "locale", 16)
    if raw is not None and not _LOCALE.match(raw):
        raise RowInvalid("locale", f"not a locale such as en_US: {raw!r}")
    return raw


def parse_bool(value: Any, name: str) -> bool | None:
    if not given(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise RowInvalid(name, f"expected true/false, yes/no, y/n or 1/0, got {value!r}")


def parse_when(value: Any, name: str) -> datetime | None:
    if not given(value):
        return None
    if not isinstance(value, str):
        raise RowInvalid(name, f"expected an ISO-8601 date/time string, got {value!r}")
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise RowInvalid(name, str(exc)) from None


def parse_money(value: Any, name: str = "amount") -> Decimal | None:
    if not given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RowInvalid(name, f"expected a number, got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise RowInvalid(name, f"not a number: {value!r}") from None
    if not amount.is_finite() or abs(amount) >= _MAX_MONEY:
        raise RowInvalid(name, f"out of range: {value!r}")
    return amount.quantize(_CENT)


def parse_int(value: Any, name: str) -> int | None:
    if not given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowInvalid(name, f"expected a whole number, got {value!r}")
    try:
        number = int(value.strip()) if isinstance(value, str) else value
    except ValueError:
        raise RowInvalid(name, f"not a whole number: {value!r}") from None
    if abs(number) > _MAX_POINTS:
        raise RowInvalid(name, f"out of range: {value!r}")
    return number


def _attributes(row: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """JSON ``attributes`` object merged with every non-column key of the row."""
    attrs: dict[str, Any] = {}
    explicit = row.get("attributes")
    if given(explicit):
        if isinstance(explicit, str):  # a JSON object in a CSV cell
            try:
                explicit = json.loads(explicit)
            except ValueError:
                raise RowInvalid("attributes", "must be a JSON object") from None
        if not isinstance(explicit, dict):
            raise RowInvalid("attributes", "must be a JSON object")
        attrs.update(explicit)
    for key, value in row.items():
        if key not in known and given(value):
            attrs[key.strip() if isinstance(key, str) else key] = value
    return attrs


def normalize_keys(row: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Match column names case-insensitively (``Email`` is ``email``)."""
    if all(k in known or not isinstance(k, str) for k in row):
        return row
    out: dict[str, Any] = {}
    for key, value in row.items():
        low = key.strip().lower() if isinstance(key, str) else key
        out[low if low in known else key] = value
    return out


def parse_customer(row: dict[str, Any], region: str) -> CustomerRec:
    cid = required_id(row.get("id"), "id")
    values = {
        "email": parse_email(row.get("email")),
        "phone": parse_phone(row.get("phone"), region),
        "first_name": _text(row.get("first_name"), "first_name", 100),
        "last_name": _text(row.get("last_name"), "last_name", 100),
        "timezone": parse_zone(row.get("timezone")),
        "locale": parse_locale(row.get("locale")),
        "tier": _text(row.get("tier"), "tier", 32),
        "email_opt_in": parse_bool(row.get("email_opt_in"), "email_opt_in"),
        "sms_opt_in": parse_bool(row.get("sms_opt_in"), "sms_opt_in"),
        "created_at": parse_when(row.get("created_at"), "created_at"),
    }
    fields = {k: v for k, v in values.items() if v is not None}
    return CustomerRec(cid, fields, _attributes(row, CUSTOMER_COLUMNS))


def _digest(*parts: object) -> str:
    text = "|".join("" if p is None else str(p) for p in parts)
    return "auto:" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def parse_interaction(row: dict[str, Any]) -> InteractionRec:
    customer_id = required_id(row.get("customer_id"), "customer_id")
    kind = _text(row.get("kind"), "kind", 32)
    if kind is None:
        raise RowInvalid("kind", "required")
    occurred_at = parse_when(row.get("occurred_at"), "occurred_at")
    if occurred_at is None:
        raise RowInvalid("occurred_at", "required")
    amount = parse_money(row.get("amount"))
    external_id = _text(row.get("external_id"), "external_id", 128, numbers=True)
    if external_id is None:
        external_id = _digest(customer_id, kind, _iso(occurred_at), amount)
    attrs = _attributes(row, INTERACTION_COLUMNS)
    return InteractionRec(customer_id, kind, occurred_at, amount, external_id, attrs)


def parse_points(row: dict[str, Any]) -> EarnRec | RedeemRec:
    customer_id = required_id(row.get("customer_id"), "customer_id")
    points = parse_int(row.get("points"), "points")
    if points is None:
        raise RowInvalid("points", "required")
    if points == 0:
        raise RowInvalid("points", "must not be 0 (positive earns, negative redeems)")
    instant_col, when = "earned_at", None
    for col in POINTS_INSTANT_COLUMNS:
        when = parse_when(row.get(col), col)
        if when is not None:
            instant_col = col
            break
    expires_at = parse_when(row.get("expires_at"), "expires_at")
    external_id = _text(row.get("external_id"), "external_id", 128, numbers=True)
    if points < 0:
        if when is None:
            raise RowInvalid("earned_at", "required (the instant of the redemption)")
        if expires_at is not None:
            raise RowInvalid("expires_at", "must be empty for a redemption (negative points)")
        ext = external_id or _digest("redeem", customer_id, -points, _iso(when))
        return RedeemRec(customer_id, -points, when, ext)
    if when is None:
        raise RowInvalid("earned_at", "required")
    if instant_col != "earned_at":
        raise RowInvalid(instant_col, "only redemptions (negative points) may use this column")
    if expires_at is None:
        raise RowInvalid("expires_at", "required for earned points")
    if expires_at <= when:
        raise RowInvalid("expires_at", "must be after earned_at")
    ext = external_id or _digest("earn", customer_id, points, _iso(when), _iso(expires_at))
    return EarnRec(customer_id, points, when, expires_at, ext)
