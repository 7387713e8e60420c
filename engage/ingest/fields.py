"""Row validation: raw CSV cells or JSON values -> typed import records.

One ``RowParser`` per import parses every row of one kind, for files and for
the HTTP ingest API alike. A bad value raises ``RowInvalid(field, why)``, so
one bad value rejects one row and never a batch; a value that can be dropped
without losing the row (a phone number that does not parse) becomes a
``RowWarning`` on an imported row instead. "Not given" is the same thing in
both formats: an empty CSV cell, a missing JSON key or ``null``. An update
leaves a field that is not given unchanged (SPEC §9, idempotent upserts),
which is why parsers return ``None`` rather than a default.

Per-row work is kept small, since an import validates millions of rows:
values that repeat (customer ids, kinds, tiers, time zones, amounts, e-mail
domains, attribute values) are validated once per distinct value; an e-mail
address in the plain ASCII form that almost every address has is checked by
one regular expression plus its domain's cached validation, and everything
else goes through ``email-validator`` itself (a property test holds the two
to the same answers).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    {"customer_id", "kind", "occurred_at", "amount", "score", "external_id", "attributes"}
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
COUNTRY_COLUMN = "country"  # an attribute; also the region of local phone numbers
NPS_KIND = "nps"
SCORE_RANGE = (0, 10)

_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")
_MAX_MONEY = Decimal(10) ** 12
_MAX_POINTS = 2**31 - 1
_CENT = Decimal("0.01")
_MEMO_LIMIT = 100_000  # distinct values remembered per column; then start over


class RowInvalid(ValueError):
    """One row cannot be imported: which field, and why."""

    def __init__(self, field: str, why: str):
        super().__init__(f"{field}: {why}")
        self.field = field
        self.why = why


@dataclass(frozen=True, slots=True)
class RowWarning:
    """An imported row lost one value, or looks suspicious: which field, and why."""

    field: str
    why: str
    kind: str  # a stable name for counting: "phone_dropped", "future_dated"


@dataclass(slots=True)
class CustomerRec:
    id: str
    fields: dict[str, Any]  # only the columns the row gives
    attributes: dict[str, Any]
    warnings: tuple[RowWarning, ...] = ()


@dataclass(slots=True)
class InteractionRec:
    customer_id: str
    kind: str
    occurred_at: datetime
    amount: Decimal | None
    external_id: str
    attributes: dict[str, Any] = field(default_factory=dict)
    score: int | None = None
    warnings: tuple[RowWarning, ...] = ()


@dataclass(slots=True)
class EarnRec:
    customer_id: str
    points: int
    earned_at: datetime
    expires_at: datetime
    external_id: str
    warnings: tuple[RowWarning, ...] = ()


@dataclass(slots=True)
class RedeemRec:
    customer_id: str
    points: int  # positive: how many points this redemption consumes
    redeemed_at: datetime
    external_id: str
    warnings: tuple[RowWarning, ...] = ()


Record = CustomerRec | InteractionRec | EarnRec | RedeemRec


def given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(value: Any, name: str, maxlen: int, *, numbers: bool = False) -> str | None:
    if value is None:
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise RowInvalid(name, f"expected text, got {type(value).__name__}")
    value = value.strip()
    if not value:
        return None
    if len(value) > maxlen:
        raise RowInvalid(name, f"longer than {maxlen} characters")
    if "\x00" in value:
        raise RowInvalid(name, "contains a NUL character")
    if "\n" in value or "\r" in value:
        raise RowInvalid(name, LINE_BREAK)
    return value


# The text of this error is recognised by the CSV reader, which says where the
# quote that swallowed the line break was opened.
LINE_BREAK = "contains a line break"


def required_id(value: Any, name: str, maxlen: int = 64) -> str:
    out = _text(value, name, maxlen, numbers=True)
    if out is None:
        raise RowInvalid(name, "required")
    return out


def parse_email(value: Any) -> str | None:
    raw = _text(value, "email", 320)
    if raw is None:
        return None
    fast = _plain_email(raw)
    if fast is not None:
        return fast
    try:
        return validate_email(raw, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise RowInvalid("email", f"not a valid address {raw!r}: {exc}") from None


# A dot-atom local part of ASCII characters (RFC 5322 atext): the form that
# email-validator accepts unchanged when it is at most 64 characters long.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAINS: dict[str, str | None] = {}


def _plain_email(raw: str) -> str | None:
    """The normalised address when ``raw`` has the plain form and a valid
    domain (validated once per domain), else None (use the full check)."""
    local, at, domain = raw.rpartition("@")
    if not at or len(local) > 64 or not raw.isascii() or not _PLAIN_LOCAL.fullmatch(local):
        return None
    normal = _DOMAINS.get(domain, "")
    if normal == "":
        try:
            normal = validate_email("x@" + domain, check_deliverability=False).domain
        except EmailNotValidError:
            normal = None
        if len(_DOMAINS) > _MEMO_LIMIT:
            _DOMAINS.clear()
        _DOMAINS[domain] = normal
    if normal is None:
        return None
    address = f"{local}@{normal}"
    return address if len(address) <= 254 else None


def parse_phone(value: Any, region: str, *, from_country: bool = False) -> str | None:
    """E.164, reading numbers without ``+country`` in ``region`` (the config's
    default, or the row's ``country`` column)."""
    raw = _text(value, "phone", 64, numbers=True)
    if raw is None:
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise RowInvalid("phone", f"not a phone number {raw!r}: {exc}") from None
    if not phonenumbers.is_valid_number(number):
        where = (
            f"region {region} from the country column"
            if from_country
            else (f"default region {region}")
        )
        raise RowInvalid("phone", f"not a valid phone number {raw!r} ({where})")
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
    if type(value) is str and len(value) > 10:
        try:  # the usual full timestamp with an offset or Z: one C call
            when = _fromisoformat(value)
        except ValueError:
            pass
        else:
            if when.tzinfo is not None:
                return when if when.tzinfo is UTC else when.astimezone(UTC)
    if not given(value):
        return None
    if not isinstance(value, str):
        raise RowInvalid(name, f"expected an ISO-8601 date/time string, got {value!r}")
    try:
        return parse_instant(value)
    except ValueError as exc:
        raise RowInvalid(name, str(exc)) from None


_fromisoformat = datetime.fromisoformat


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


def parse_score(value: Any) -> int | None:
    """A survey answer: a whole number from 0 to 10 (NPS)."""
    score = parse_int(value, "score")
    low, high = SCORE_RANGE
    if score is not None and not low <= score <= high:
        raise RowInvalid("score", f"must be a whole number from {low} to {high}, got {value!r}")
    return score


def scalar_kind(text: str) -> str:
    """What JSON scalar a CSV cell spells exactly: ``bool`` (true/false, any
    case), ``int`` (no leading zeros, no ``+``), ``number`` (a decimal JSON
    writes back the same: ``4.5``, not ``4.50``), else ``text``."""
    low = text.lower()
    if low in ("true", "false"):
        return "bool"
    first = text[:1]
    if first.isdigit() or (first == "-" and text[1:2].isdigit()):
        try:
            number = int(text)
            return "int" if str(number) == text and abs(number) < 2**63 else "text"
        except ValueError:
            try:
                return "number" if repr(float(text)) == text else "text"
            except ValueError:
                pass
    return "text"


def column_kind(values: list[str]) -> str:
    """The type of a CSV attribute column, from values seen in it: the one
    kind they all share (integers and decimals make ``number``), else ``text``."""
    kinds = {scalar_kind(v) for v in values}
    if kinds == {"bool"}:
        return "bool"
    if kinds == {"int"}:
        return "int"
    if kinds <= {"int", "number"}:
        return "number"
    return "text"


def typed(kind: str) -> Callable[[str], Any]:
    """A cell of a column of ``kind`` as its JSON scalar; a cell that does not
    fit the column (``n/a`` among numbers) stays text."""

    def cast(text: str) -> Any:
        found = scalar_kind(text)
        if found == "bool" and kind == "bool":
            return text.lower() == "true"
        if found == "int" and kind in ("int", "number"):
            return int(text)
        if found == "number" and kind == "number":
            return float(text)
        return text

    return cast


def normalize_keys(row: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Match column names case-insensitively (``Email`` is ``email``)."""
    if all(k in known or not isinstance(k, str) for k in row):
        return row
    out: dict[str, Any] = {}
    for key, value in row.items():
        low = key.strip().lower() if isinstance(key, str) else key
        out[low if low in known else key] = value
    return out


def _digest(*parts: object) -> str:
    text = "|".join("" if p is None else str(p) for p in parts)
    return "auto:" + hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _memo(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` remembered per distinct hashable input, its RowInvalid included."""
    seen: dict[Any, Any] = {}

    def run(value: Any) -> Any:
        try:
            hit = seen[value]
        except KeyError:
            try:
                hit = fn(value)
            except RowInvalid as exc:
                hit = exc
            if len(seen) > _MEMO_LIMIT:
                seen.clear()
            seen[value] = hit
        except TypeError:  # unhashable: a JSON list or object
            return fn(value)
        if type(hit) is RowInvalid:
            raise RowInvalid(hit.field, hit.why)
        return hit

    return run


class RowParser:
    """Parses rows of one kind: ``parse(values)`` -> a record, or RowInvalid.

    ``columns``: the CSV header when values are CSV text: each attribute
    column then gets one JSON type for the whole file (``learn``), so
    ``where: {vip: true, visits: 3}`` finds what a spreadsheet holds, and a
    column of zip codes with leading zeros stays text throughout. JSON values
    keep the type JSON gave them. ``now`` is the import's instant:
    interactions after it are warned about.
    """

    def __init__(
        self,
        kind: str,
        *,
        default_region: str,
        now: datetime,
        columns: list[str] | None = None,
        phone_helper: bool = False,
    ) -> None:
        self.kind = kind
        self.known = COLUMNS[kind]
        self.now = now
        self.default_region = default_region
        # CSV: the attribute columns, those not typed yet, the cast of the others.
        self.extra = None if columns is None else [c for c in columns if c not in self.known]
        self.untyped = list(self.extra or ())
        self.casts: dict[str, Callable[[Any], Any]] = {}
        self.customer_id = _memo(lambda v: required_id(v, "customer_id"))
        self.kind_of = _memo(lambda v: _text(v, "kind", 32))
        self.amount = _memo(parse_money)
        self.score = _memo(parse_score)
        self.points = _memo(lambda v: parse_int(v, "points"))
        self.tier = _memo(lambda v: _text(v, "tier", 32))
        self.zone = _memo(parse_zone)
        self.locale = _memo(parse_locale)
        self.email_opt_in = _memo(lambda v: parse_bool(v, "email_opt_in"))
        self.sms_opt_in = _memo(lambda v: parse_bool(v, "sms_opt_in"))
        self.region = _memo(self._region)
        # Phones validated ahead on another core (``prefetch``): row id -> answer.
        self.phone_helper = phone_helper and kind == "customers"
        self._helper: Any = None
        self._prefetched: dict[int, int] = {}
        self._answers: Any = None  # the batch's Future, then its list of answers
        parsers: dict[str, Callable[[dict[str, Any]], Record]] = {
            "customers": self.parse_customer,
            "interactions": self.parse_interaction,
            "points": self.parse_points,
        }
        self.parse = parsers[kind]

    # -- phones on the other core (customers of big files) ---------------------------

    def prefetch(self, rows: list[dict[str, Any]]) -> None:
        """Start validating these rows' phone numbers in the helper process
        (``engage.ingest.phones``); ``parse`` collects the answers."""
        self._prefetched, self._answers = {}, None
        if not self.phone_helper:
            return
        requests: list[Any] = []
        for row in rows:
            raw = row.get("phone")
            if raw is None or (type(raw) is str and not raw.strip()):
                continue
            region = self._country_region(row)
            self._prefetched[id(row)] = len(requests)
            if region is not None:
                requests.append((raw, region, True))
            else:
                requests.append((raw, self.default_region, False))
        if self._helper is None:
            from .phones import HELPER_MIN_PHONES, PhoneHelper

            if len(requests) < HELPER_MIN_PHONES:
                self.phone_helper = False  # a small file: not worth a process
                self._prefetched = {}
                return
            self._helper = PhoneHelper()
        self._answers = self._helper.submit(requests)
        if self._answers is None:
            self._prefetched = {}

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    def _phone(self, row: dict[str, Any], raw: Any) -> str | None:
        """The E.164 number (RowInvalid when it is not one), from the helper's
        answers when this row's was asked for."""
        at = self._prefetched.get(id(row))
        if at is not None:
            answers = self._answers
            if not isinstance(answers, list):
                answers = self._answers = answers.result()
            phone, why = answers[at]
            if why is not None:
                raise RowInvalid("phone", why)
            return phone  # type: ignore[no-any-return]
        region = self._country_region(row)
        if region is not None:
            return parse_phone(raw, region, from_country=True)
        return parse_phone(raw, self.default_region)

    # -- shared pieces --------------------------------------------------------------

    def learn(self, rows: list[dict[str, Any]]) -> None:
        """Type the CSV attribute columns that have values in these rows (the
        first batch that has any), for the rest of the file."""
        if not self.untyped:
            return
        for column in list(self.untyped):
            values = [v.strip() for r in rows if type(v := r.get(column)) is str and v.strip()]
            if values:
                self.casts[column] = _memo(typed(column_kind(values)))
                self.untyped.remove(column)

    def _attributes(self, row: dict[str, Any]) -> dict[str, Any]:
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
        casts = self.casts
        if self.extra is not None:  # CSV: the header said which columns these are
            pairs: Any = ((key, row[key]) for key in self.extra)
        else:
            known = self.known
            pairs = ((k, v) for k, v in row.items() if k not in known)
        for key, value in pairs:
            if type(value) is str:
                value = value.strip()
                if not value:
                    continue
                cast = casts.get(key)
                if cast is not None:
                    value = cast(value)
            elif value is None:
                continue
            attrs[key.strip() if isinstance(key, str) else key] = value
        return attrs

    def _country_region(self, row: dict[str, Any]) -> str | None:
        """The region of a ``country`` column (any case), when it names one."""
        country = row.get(COUNTRY_COLUMN)
        if country is None:
            for key, value in row.items():
                if isinstance(key, str) and key.strip().lower() == COUNTRY_COLUMN:
                    country = value
                    break
        return None if country is None else self.region(country)

    def _region(self, country: Any) -> str | None:
        """The phone region a ``country`` value names (ISO 3166 alpha-2), if any."""
        if not isinstance(country, str):
            return None
        code = country.strip().upper()
        return code if code in phonenumbers.SUPPORTED_REGIONS else None

    # -- per kind --------------------------------------------------------------------

    def parse_customer(self, row: dict[str, Any]) -> CustomerRec:
        cid = required_id(row.get("id"), "id")
        fields: dict[str, Any] = {}
        warnings: tuple[RowWarning, ...] = ()
        get = row.get
        if (v := get("email")) is not None and (email := parse_email(v)) is not None:
            fields["email"] = email
        if (v := get("phone")) is not None:
            try:
                phone = self._phone(row, v)
            except RowInvalid as exc:
                if exc.why == LINE_BREAK:
                    raise
                why = f"{exc.why}; the customer is imported without it"
                warnings = (RowWarning("phone", why, "phone_dropped"),)
            else:
                if phone is not None:
                    fields["phone"] = phone
        for name in ("first_name", "last_name"):
            if (v := get(name)) is not None and (text := _text(v, name, 100)) is not None:
                fields[name] = text
        for name, parse in (
            ("timezone", self.zone),
            ("locale", self.locale),
            ("tier", self.tier),
            ("email_opt_in", self.email_opt_in),
            ("sms_opt_in", self.sms_opt_in),
        ):
            if (v := get(name)) is not None and (value := parse(v)) is not None:
                fields[name] = value
        if (v := get("created_at")) is not None and (when := parse_when(v, "created_at")):
            fields["created_at"] = when
        return CustomerRec(cid, fields, self._attributes(row), warnings)

    def parse_interaction(self, row: dict[str, Any]) -> InteractionRec:
        get = row.get
        customer_id = self.customer_id(get("customer_id"))
        kind = self.kind_of(get("kind"))
        if kind is None:
            raise RowInvalid("kind", "required")
        occurred_at = parse_when(get("occurred_at"), "occurred_at")
        if occurred_at is None:
            raise RowInvalid("occurred_at", "required")
        v = get("amount")
        amount = None if v is None else self.amount(v)
        v = get("score")
        score = None if v is None else self.score(v)
        if score is None and kind == NPS_KIND:
            low, high = SCORE_RANGE
            why = f"required for {NPS_KIND} answers (a whole number from {low} to {high})"
            raise RowInvalid("score", why)
        external_id = _text(get("external_id"), "external_id", 128, numbers=True)
        if external_id is None:
            external_id = _digest(customer_id, kind, _iso(occurred_at), amount)
        warnings: tuple[RowWarning, ...] = ()
        if occurred_at > self.now:
            warnings = (
                RowWarning(
                    "occurred_at",
                    f"{_iso(occurred_at)} is in the future (the import ran at {_iso(self.now)})",
                    "future_dated",
                ),
            )
        return InteractionRec(
            customer_id, kind, occurred_at, amount, external_id, self._attributes(row), score,
            warnings,
        )  # fmt: skip

    def parse_points(self, row: dict[str, Any]) -> EarnRec | RedeemRec:
        get = row.get
        customer_id = self.customer_id(get("customer_id"))
        points = self.points(get("points"))
        if points is None:
            raise RowInvalid("points", "required")
        if points == 0:
            raise RowInvalid("points", "must not be 0 (positive earns, negative redeems)")
        instant_col, when = "earned_at", None
        for col in POINTS_INSTANT_COLUMNS:
            when = parse_when(get(col), col)
            if when is not None:
                instant_col = col
                break
        expires_at = parse_when(get("expires_at"), "expires_at")
        external_id = _text(get("external_id"), "external_id", 128, numbers=True)
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
