"""Seeded, realistic shop data written straight into the documented tables.

One generator serves the unit tests (hundreds of customers), ``engage demo``
(a few thousand) and the benchmarks (SPEC §11: a million customers, ten
million interactions, two million point lots). So it streams: rows are made
customer by customer, buffered up to ``batch`` rows and bulk-inserted in one
transaction per batch, never held all at once. PostgreSQL gets ``COPY`` for
every table (several times faster than multi-row INSERT); SQLite gets
SQLAlchemy Core ``executemany`` with ``synchronous=OFF`` on the generator's
own connection only.

Everything random comes from one ``random.Random(seed)`` consumed in customer
order, and every instant is derived from ``now``: the same seed and ``now``
give the same rows on every backend, whatever ``batch`` is. Addresses are
fictional by construction: e-mails on the reserved example.com/.org/.net
domains, phone numbers only from ranges regulators reserve for fiction
(NANP 555-01xx, Ofcom drama numbers, ACMA and ARCEP fiction ranges); for
countries without such a range the generated customers have no phone.
"""

from __future__ import annotations

import json
import math
import random
import time
import unicodedata
from bisect import bisect
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Connection, Engine, Table, func, select, text

from ..db import facts as stored
from ..db.load import (
    add_foreign_keys,
    create_indexes,
    drop_foreign_keys,
    drop_indexes,
    load_rows,
)
from ..db.models import (
    Customer,
    CustomerFacts,
    Interaction,
    PointsAllocation,
    PointsLot,
    PointsRedemption,
    UTCDateTime,
)
from ..errors import EngageError
from ..timeutil import ensure_utc
from .loading import FIRST_LOAD_TABLES, deferred_indexes

DAY = 86_400.0
YEAR = 365 * DAY
HISTORY = 3 * YEAR  # customers signed up over the last three years
AGE_SKEW = 1.25  # age = HISTORY * U**AGE_SKEW: more recent sign-ups than old ones
MEAN_AGE = HISTORY / (AGE_SKEW + 1)
QUIET_SHARE = 0.35  # customers whose activity stopped at least 30 days ago
RECENT_GAP = 6 * DAY  # mean time since the last activity of everyone else
ORDER_SHARE = 0.17
SOON_SHARE = 0.04  # customers given a lot expiring within 30 days of `now`
REDEEMER_SHARE = 0.4

KINDS = ("visit", "order", "email_open", "email_click", "support", "sms_reply", "nps")
KIND_CUM = (0.50, 0.50 + ORDER_SHARE, 0.83, 0.90, 0.94, 0.98, 1.0)
# Survey answers (kind nps, score 0-10): customers who went quiet answer more
# critically, so detractor-recovery audiences and the report's NPS have both ends.
NPS_SHARES = {False: (0.20, 0.30), True: (0.50, 0.25)}  # quiet -> (detractors, passives)
TIERS = ("bronze", "silver", "gold", "platinum")
TIER_CUM = (0.60, 0.85, 0.97, 1.0)
TIER_ACTIVITY = {"bronze": 0.8, "silver": 1.2, "gold": 1.6, "platinum": 2.5}
_TIER_NORM = 0.6 * 0.8 + 0.25 * 1.2 + 0.12 * 1.6 + 0.03 * 2.5
SOURCES = ("organic", "google", "instagram", "facebook", "newsletter", "referral", "tiktok")
SOURCE_CUM = (0.25, 0.45, 0.62, 0.74, 0.84, 0.94, 1.0)
DOMAINS = ("example.com", "example.com", "example.org", "example.net")
CAMPAIGNS = ("newsletter", "new-arrivals", "winback-30d", "points-expiring", "vip-thanks")
TOPICS = ("shipping", "returns", "sizing", "payment", "account")
REDEEM_SIZES = (100, 200, 250, 500, 1000)
BONUS_SIZES = (50, 100, 100, 200, 250, 500)

_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        ("James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Oliver", "Sophia", "Ethan",
         "Isabella", "Lucas", "Mia", "Mason", "Charlotte", "Jack", "Amelia", "Henry", "Grace"),
        ("Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Taylor",
         "Anderson", "Moore", "Clark", "Walker", "O'Brien", "Campbell", "Murphy", "Evans"),
    ),
    "es": (
        ("Sofía", "Mateo", "Valentina", "Santiago", "Camila", "Diego", "Lucía", "Alejandro",
         "Martina", "Javier", "Elena", "Carlos"),
        ("García", "Martínez", "Rodríguez", "López", "Hernández", "González", "Pérez",
         "Sánchez", "Ramírez", "Torres", "Flores", "Navarro"),
    ),
    "fr": (
        ("Léa", "Hugo", "Chloé", "Louis", "Manon", "Gabriel", "Camille", "Arthur", "Inès",
         "Jules", "Zoé", "Raphaël"),
        ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
         "Leroy", "Moreau", "Lefèvre", "Girard"),
    ),
    "de": (
        ("Lukas", "Mia", "Leon", "Hannah", "Finn", "Lena", "Jonas", "Emilia", "Felix", "Marie",
         "Paul", "Sophie"),
        ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
         "Schulz", "Hoffmann", "Koch", "Schäfer"),
    ),
    "ja": (
        ("Haruto", "Yui", "Sota", "Aoi", "Ren", "Hina", "Yuto", "Sakura", "Riku", "Mei",
         "Kaito", "Yuna"),
        ("Sato", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Ito", "Yamamoto", "Nakamura",
         "Kobayashi", "Kato", "Yoshida", "Yamada"),
    ),
    "pt": (
        ("Miguel", "Helena", "Arthur", "Alice", "Heitor", "Laura", "Davi", "Manuela",
         "Bernardo", "Beatriz", "Gustavo", "Júlia"),
        ("Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira",
         "Lima", "Gomes", "Costa", "Araújo"),
    ),
    "hi": (
        ("Aarav", "Saanvi", "Vivaan", "Ananya", "Aditya", "Diya", "Arjun", "Priya", "Rohan",
         "Isha", "Kabir", "Meera"),
        ("Sharma", "Patel", "Singh", "Kumar", "Gupta", "Reddy", "Iyer", "Nair", "Das", "Mehta",
         "Rao", "Joshi"),
    ),
    "zh": (
        ("Wei", "Mei", "Jun", "Xiu", "Hao", "Lan", "Ming", "Yan"),
        ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao"),
    ),
}
_CULTURES = tuple(_NAMES)


@dataclass(frozen=True)
class _Zone:
    tz: str
    locale: str
    weight: float
    phones: tuple[str, ...] = ()  # E.164 patterns; each "x" becomes a random digit


def _nanp(*area_codes: str) -> tuple[str, ...]:
    """NANP numbers 555-0100..0199 are reserved for fiction in every area code."""
    return tuple(f"+1{ac}55501xx" for ac in area_codes)


# ACMA's fictional mobile numbers (0491 570 xxx ... 0491 579 xxx list).
_AU_MOBILES = tuple(
    f"+61491{n}"
    for n in (
        "570006 570156 570157 570158 570159 570110 570313 570737 571266 571491 571804 572549 "
        "572665 572983 573770 573087 574118 574632 575254 575789 576398 576801 577426 577644 "
        "578957 578148 578888 579212 579760 579455"
    ).split()
)
# Ofcom drama numbers that libphonenumber accepts as valid (07700 900xxx is not).
_UK = tuple(
    f"+44{p}xxx"
    for p in ("2079460", "1614960", "1214960", "1134960", "1174960", "1414960", "1314960",
              "1144960", "1184960", "1914960", "2890180")
)
_FR = tuple(f"+33{p}xxxx" for p in ("19900", "26191", "35301", "46571", "53649", "93665"))


@dataclass(frozen=True)
class _Region:
    country: str
    weight: float
    cultures: tuple[str, ...]  # drawn uniformly: repeat a culture to weight it
    zones: tuple[_Zone, ...]
    zone_cum: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        total, cum = sum(z.weight for z in self.zones), list[float]()
        for z in self.zones:
            cum.append((cum[-1] if cum else 0.0) + z.weight / total)
        object.__setattr__(self, "zone_cum", tuple(cum))


REGIONS = (
    _Region("US", 38, ("en", "en", "en", "en", "es", "zh"), (
        _Zone("America/New_York", "en-US", 4, _nanp("212", "917", "718", "202", "305")),
        _Zone("America/Chicago", "en-US", 3, _nanp("312", "773", "713")),
        _Zone("America/Denver", "en-US", 1, _nanp("303", "720")),
        _Zone("America/Phoenix", "en-US", 0.5, _nanp("602")),
        _Zone("America/Los_Angeles", "en-US", 3, _nanp("213", "310", "415", "206")),
    )),
    _Region("GB", 14, ("en", "en", "en", "hi"), (_Zone("Europe/London", "en-GB", 1, _UK),)),
    _Region("CA", 7, ("en", "en", "fr", "zh", "hi"), (
        _Zone("America/Toronto", "en-CA", 3, _nanp("416", "647")),
        _Zone("America/Toronto", "fr-CA", 1.5, _nanp("514")),
        _Zone("America/Vancouver", "en-CA", 1.5, _nanp("604")),
    )),
    _Region("AU", 8, ("en", "en", "en", "zh"), (
        _Zone("Australia/Sydney", "en-AU", 4, ("+6125550xxxx", "+6127010xxxx") + _AU_MOBILES),
        _Zone("Australia/Melbourne", "en-AU", 3, ("+6135550xxxx", "+6137010xxxx") + _AU_MOBILES),
        _Zone("Australia/Brisbane", "en-AU", 2, ("+6175550xxxx",) + _AU_MOBILES),
        _Zone("Australia/Perth", "en-AU", 1, ("+6185550xxxx",) + _AU_MOBILES),
    )),
    _Region("FR", 8, ("fr",), (_Zone("Europe/Paris", "fr-FR", 1, _FR),)),
    _Region("DE", 8, ("de",), (_Zone("Europe/Berlin", "de-DE", 1),)),
    _Region("JP", 6, ("ja",), (_Zone("Asia/Tokyo", "ja-JP", 1),)),
    _Region("BR", 5, ("pt",), (_Zone("America/Sao_Paulo", "pt-BR", 1),)),
    _Region("IN", 3, ("hi",), (_Zone("Asia/Kolkata", "en-IN", 1),)),
    _Region("ES", 3, ("es",), (_Zone("Europe/Madrid", "es-ES", 1),)),
)
REGION_CUM = tuple(
    sum(r.weight for r in REGIONS[: i + 1]) / sum(r.weight for r in REGIONS)
    for i in range(len(REGIONS))
)
# Share of customers in countries with a fictional range: chosen so that ~60% have a phone.
_PHONED_SHARE = sum(r.weight for r in REGIONS if r.zones[0].phones) / sum(r.weight for r in REGIONS)
PHONE_RATE = min(1.0, 0.60 / _PHONED_SHARE)
EMAIL_RATE, EMAIL_OPT_IN, SMS_OPT_IN = 0.95, 0.84, 0.75  # opt-ins among reachable customers

COLUMNS: dict[str, tuple[str, ...]] = {
    "customer": ("id", "email", "phone", "first_name", "last_name", "timezone", "locale", "tier",
                 "attributes", "email_opt_in", "sms_opt_in", "created_at", "updated_at"),
    "interaction": ("id", "customer_id", "kind", "occurred_at", "amount", "score", "attributes",
                    "external_id", "created_at"),
    "points_lot": ("id", "customer_id", "points", "remaining", "earned_at", "expires_at",
                   "external_id"),
    "points_redemption": ("id", "customer_id", "points", "redeemed_at", "external_id"),
    "points_allocation": ("redemption_id", "lot_id", "points"),
}
TABLES: tuple[Table, ...] = tuple(
    m.__table__  # type: ignore[misc]
    for m in (Customer, Interaction, PointsLot, PointsRedemption, PointsAllocation)
)
_DEFERRED = list(FIRST_LOAD_TABLES.values())  # the tables whose first load defers indexes


@dataclass
class SampleStats:
    """What one ``generate`` call wrote (also passed to ``progress`` after each batch)."""

    customers: int = 0
    interactions: int = 0
    lots: int = 0
    redemptions: int = 0
    allocations: int = 0
    elapsed: float = 0.0

    @property
    def rows(self) -> int:
        return self.customers + self.interactions + self.lots + self.redemptions + self.allocations

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0


Row = tuple[Any, ...]
Progress = Callable[[SampleStats], None]


def generate(
    engine: Engine,
    *,
    customers: int,
    seed: int = 42,
    now: datetime,
    interactions_per_customer: float = 10.0,
    lots_per_customer: float = 2.0,
    batch: int = 10_000,
    progress: Progress | None = None,
) -> SampleStats:
    """Write ``customers`` sample customers with their interactions and points.

    The tables must exist and hold no customers (ids are ``c0000001``...).
    ``batch`` bounds the rows buffered before one bulk insert (memory and
    transaction size); it does not change the data. ``progress`` is called
    with the running totals after every batch.
    """
    if customers < 0 or batch < 1 or interactions_per_customer < 0 or lots_per_customer < 0:
        raise ValueError("customers, batch and the per-customer means must not be negative")
    started = time.perf_counter()
    stats = SampleStats()
    maker = _Maker(random.Random(seed), ensure_utc(now), interactions_per_customer,
                   lots_per_customer)
    # Generating is Python work; on PostgreSQL inserting is mostly the server's
    # work, so one database thread writes batch k while this thread makes batch
    # k+1 (at most two batches in memory): 120 s -> 80 s at scale 0.1. SQLite
    # does its work in-process and measured slower that way, so it waits.
    overlap = engine.dialect.name == "postgresql"
    with ThreadPoolExecutor(1, thread_name_prefix="engage-sample") as db:
        writer = db.submit(_Writer.open, engine).result()
        try:
            in_flight: Future[tuple[list[Row], ...]] | None = None
            for n in range(1, customers + 1):
                maker.customer(n)
                if maker.pending >= batch or n == customers:
                    if in_flight is not None:
                        _count(stats, in_flight.result(), started, progress)
                    in_flight = db.submit(writer.write_batch, maker.take())
                    if not overlap:
                        _count(stats, in_flight.result(), started, progress)
                        in_flight = None
            if in_flight is not None:
                _count(stats, in_flight.result(), started, progress)
            db.submit(writer.finish).result()
        finally:
            db.submit(writer.close).result()
    stats.elapsed = time.perf_counter() - started
    return stats


def _count(stats: SampleStats, buffers: Sequence[list[Row]], started: float,
           progress: Progress | None) -> None:
    customers, interactions, lots, redemptions, allocations = (len(b) for b in buffers)
    stats.customers += customers
    stats.interactions += interactions
    stats.lots += lots
    stats.redemptions += redemptions
    stats.allocations += allocations
    stats.elapsed = time.perf_counter() - started
    if progress is not None:
        progress(stats)


class _Writer:
    """Bulk-writes buffered rows whose instants are whole epoch seconds.

    Through the loader that imports use (``engage.db.load.load_rows``): COPY on
    PostgreSQL, multi-row INSERTs on SQLite, as a first full load (the tables
    are empty): the deferred indexes (and PostgreSQL foreign keys) are built
    at the end, and ``customer_facts`` rebuilt once instead of by the triggers
    row by row. Instants are formatted straight into text (``UTCDateTime``
    keeps naive UTC text on SQLite), JSON encodings are remembered.
    """

    @classmethod
    def open(cls, engine: Engine) -> _Writer:
        """Connect (in the thread that will do all the writing) and check emptiness."""
        conn = engine.connect()
        try:
            if conn.execute(select(Customer.id).limit(1)).first() is not None:
                raise EngageError(
                    "sample data goes into an empty database: customers already exist")
            conn.commit()
            return cls(conn)
        except BaseException:
            conn.close()
            raise

    def __init__(self, conn: Connection) -> None:
        self.conn, self.copy = conn, conn.dialect.name == "postgresql"
        self.restore = _tune(conn)
        self.convert: dict[str, list[Callable[[Any], Any] | None]] = {}
        for table in TABLES:
            instant = _instant_text("+00" if self.copy else ".000000")
            self.convert[table.name] = [
                self._converter(table.c[c], instant) for c in COLUMNS[table.name]
            ]
        with conn.begin():  # a first full load: see engage.ingest.loading
            self.rule = stored.installed_rule(conn)
            for table in _DEFERRED:
                drop_indexes(conn, deferred_indexes(table))
                drop_foreign_keys(conn, table)
            stored.invalidate(conn, self.rule, self.now())

    def _converter(
        self, column: Any, instant: Callable[[int], str]
    ) -> Callable[[Any], Any] | None:
        if isinstance(column.type, UTCDateTime):
            return instant
        if self.copy:  # COPY text: psycopg adapts the rest (Decimal, bool, str, int)
            return _remember_json(json.dumps) if isinstance(column.type, JSON) else None
        dialect = self.conn.dialect
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None and isinstance(column.type, JSON):
            return _remember_json(process)
        return process

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)

    def write_batch(self, buffers: tuple[list[Row], ...]) -> tuple[list[Row], ...]:
        """All tables' rows of one batch in one transaction, parents first."""
        with self.conn.begin(), stored.facts_paused(self.conn):
            for table, rows in zip(TABLES, buffers, strict=True):
                if rows:
                    self.write(table, rows)
        return buffers

    def finish(self) -> None:
        """The deferred indexes and foreign keys, then the facts, then statistics."""
        conn = self.conn
        with conn.begin():
            create_indexes(conn, [ix for t in _DEFERRED for ix in deferred_indexes(t)])
            add_foreign_keys(conn, _DEFERRED)
        with conn.begin():
            stored.rebuild(conn, self.rule, self.now())
        _finish(conn)

    def close(self) -> None:
        try:
            self.restore()
        finally:
            self.conn.close()

    def write(self, table: Table, rows: list[Row]) -> None:
        # Column-wise: transpose, map each converter over its column, transpose back
        # (C-level loops; a per-value generator costs more than the conversions).
        columns = [
            col if f is None else map(f, col)
            for f, col in zip(self.convert[table.name], zip(*rows, strict=True), strict=True)
        ]
        values = list(zip(*columns, strict=True))
        load_rows(self.conn, table, COLUMNS[table.name], values, converted=True)


def _remember_json(encode: Callable[[Any], Any]) -> Callable[[dict[str, Any]], Any]:
    """Generated attribute dicts take a few hundred distinct values: encode each once."""
    seen: dict[tuple[Any, ...], Any] = {}

    def convert(value: dict[str, Any]) -> Any:
        key = tuple(value.items())
        if key not in seen:
            if len(seen) > 10_000:
                seen.clear()
            seen[key] = encode(value)
        return seen[key]

    return convert


def _instant_text(suffix: str) -> Callable[[int], str]:
    """Epoch seconds as ``YYYY-MM-DD HH:MM:SS`` UTC + ``suffix`` (``.000000``:
    SQLAlchemy's SQLite DATETIME form; ``+00``: PostgreSQL timestamptz input),
    remembering the last value because rows often repeat an instant."""
    fmt = "%Y-%m-%d %H:%M:%S" + suffix
    last: list[Any] = [None, ""]

    def convert(ts: int) -> str:
        if ts != last[0]:
            last[0], last[1] = ts, time.strftime(fmt, time.gmtime(ts))
        return str(last[1])

    return convert


def _tune(conn: Connection) -> Callable[[], None]:
    """SQLite: skip fsync while bulk loading, on this connection only; undo after."""
    if conn.dialect.name != "sqlite":
        return lambda: None
    before = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    conn.exec_driver_sql("PRAGMA synchronous=OFF")
    conn.commit()

    def restore() -> None:
        conn.rollback()
        conn.exec_driver_sql(f"PRAGMA synchronous={int(before or 1)}")
        conn.commit()

    return restore


def _finish(conn: Connection) -> None:
    """PostgreSQL: move the id sequences past the explicit ids, refresh statistics."""
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer
    with conn.begin():
        for table in TABLES[1:4]:  # interaction, points_lot, points_redemption
            conn.execute(
                select(func.setval(func.pg_get_serial_sequence(table.name, "id"),
                                   select(func.max(table.c.id)).scalar_subquery()))
            )
        analyzed = (*TABLES, CustomerFacts.__table__)
        conn.execute(text("ANALYZE " + ", ".join(quote.format_table(t) for t in analyzed)))


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


# Customers who got a campaign's message order within its attribution window
# more often than its holdout does: the lift `engage report` should find.
RESPONSE_RATES = {False: 0.20, True: 0.08}  # held out -> chance of an order


def responses(
    members: Sequence[tuple[str, str, datetime, bool]],
    *,
    now: datetime,
    window: timedelta,
    seed: int = 42,
) -> list[dict[str, Any]]:
    """Orders that campaign messages led to, for sample shops that ran campaigns.

    ``members``: ``(campaign, customer_id, planned send instant, held_out)``.
    Each member orders within ``window`` after the send instant (and before
    ``now``) with ``RESPONSE_RATES`` chance: recipients more often than the
    holdout. Returns interaction rows (``import_rows`` shape) with external
    ids that are stable for the same members and seed.
    """
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    horizon = ensure_utc(now)
    for campaign, customer_id, sent, held_out in members:
        sent = ensure_utc(sent)
        if rng.random() >= RESPONSE_RATES[held_out]:
            continue
        room = min(window, horizon - sent)
        if room <= timedelta(0):
            continue
        at = sent + room * rng.random()
        value = rng.lognormvariate(4.0, 0.6)
        out.append({
            "customer_id": customer_id,
            "kind": "order",
            "occurred_at": at.isoformat(),
            "amount": f"{value:.2f}",
            "external_id": f"response-{campaign}-{customer_id}-{int(sent.timestamp())}",
        })
    return out


def _nps_score(rng: random.Random, quiet: bool) -> int:
    """A 0-10 answer: detractor (0-6), passive (7-8) or promoter (9-10)."""
    detractors, passives = NPS_SHARES[quiet]
    u = rng.random()
    if u < detractors:
        return int(7 * u / detractors)
    if u < detractors + passives:
        return 7 + int(2 * (u - detractors) / passives)
    return 9 + int(2 * (u - detractors - passives) / (1 - detractors - passives))


_FOLDED: dict[str, str] = {}


def _fold(name: str) -> str:
    """``Lefèvre`` -> ``lefevre``: the ASCII letters of a name, for e-mail local parts."""
    if name not in _FOLDED:
        ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        _FOLDED[name] = "".join(ch for ch in ascii_.lower() if ch.isalnum())
    return _FOLDED[name]


class _Maker:
    """Makes one customer's rows at a time into per-table buffers (FK order)."""

    def __init__(self, rng: random.Random, now: datetime, mean: float, lots: float) -> None:
        self.rng, self.now, self.mean = rng, now.timestamp(), mean
        self.buffers: tuple[list[Row], ...] = ([], [], [], [], [])
        self.pending = 0
        self.next_interaction = self.next_lot = self.next_redemption = 1
        # Every order earns a lot while that is not more than asked for; bonus lots
        # (sign-up, reviews, birthdays) make up the rest of the requested mean.
        old_enough = 1 - ((YEAR - 30 * DAY) / HISTORY) ** (1 / AGE_SKEW)
        self.soon_share = SOON_SHARE if lots > 0 else 0.0
        from_orders = max(0.0, min(lots - self.soon_share * old_enough, mean * ORDER_SHARE))
        self.p_order_lot = from_orders / (mean * ORDER_SHARE) if mean > 0 else 0.0
        self.bonus_mean = max(0.0, lots - self.soon_share * old_enough - from_orders)

    def take(self) -> tuple[list[Row], ...]:
        """The buffered rows (handed to the writer thread); start new buffers."""
        full, self.buffers = self.buffers, ([], [], [], [], [])
        self.pending = 0
        return full

    def customer(self, n: int) -> None:
        rng, now = self.rng, self.now
        cid = f"c{n:07d}"
        region = REGIONS[min(bisect(REGION_CUM, rng.random()), len(REGIONS) - 1)]
        zone = region.zones[min(bisect(region.zone_cum, rng.random()), len(region.zones) - 1)]
        cultures = region.cultures if rng.random() < 0.85 else _CULTURES
        firsts, lasts = _NAMES[cultures[int(rng.random() * len(cultures))]]
        first, last = firsts[int(rng.random() * len(firsts))], lasts[int(rng.random() * len(lasts))]
        email = None
        if rng.random() < EMAIL_RATE:
            domain = DOMAINS[int(rng.random() * len(DOMAINS))]
            if rng.random() < 0.8:
                email = f"{_fold(first)}.{_fold(last)}.{n}@{domain}"
            else:
                email = f"{_fold(first)[0]}{_fold(last)}{n}@{domain}"
        phone = None
        if zone.phones and rng.random() < PHONE_RATE:
            pattern = zone.phones[int(rng.random() * len(zone.phones))]
            k = pattern.count("x")
            phone = pattern[: len(pattern) - k] + f"{rng.randrange(10**k):0{k}d}" if k else pattern
        tier = TIERS[bisect(TIER_CUM, rng.random())]
        source = SOURCES[min(bisect(SOURCE_CUM, rng.random()), len(SOURCES) - 1)]
        created = int(now - max(3600.0, HISTORY * rng.random() ** AGE_SKEW))
        age = now - created
        count = 0
        if self.mean > 0:
            tenure = 0.4 + 0.6 * age / MEAN_AGE  # long-standing customers did more
            scale = self.mean / 0.7 * TIER_ACTIVITY[tier] / _TIER_NORM * tenure
            count = int(rng.gammavariate(0.7, scale) + 0.5)
        quiet = age > 45 * DAY and rng.random() < QUIET_SHARE
        if quiet:
            end = int(created + (now - 30 * DAY - created) * rng.random())
        else:
            end = int(max(created, now - rng.expovariate(1 / RECENT_GAP)))
        lots = self._interactions(cid, count, created, end, quiet)
        self._points(cid, lots, created, end)
        self.buffers[0].append((
            cid, email, phone, first, last, zone.tz, zone.locale, tier,
            {"country": region.country, "source": source},
            email is not None and rng.random() < EMAIL_OPT_IN,
            phone is not None and rng.random() < SMS_OPT_IN,
            created, created,
        ))
        self.pending += 1

    def _interactions(
        self, cid: str, count: int, created: int, end: int, quiet: bool
    ) -> list[list[int]]:
        """Interactions between sign-up and ``end`` (the last one is at ``end``);
        returns the point lots their orders earned as ``[earned, expires, points]``."""
        rng, out, lots = self.rng, self.buffers[1], []
        span = end - created
        times = sorted(int(created + span * rng.random()) for _ in range(count - 1))
        if count:
            times.append(end)
        for i, t in enumerate(times):
            kind = KINDS[min(bisect(KIND_CUM, rng.random()), len(KINDS) - 1)]
            if kind == "email_open" and not quiet and i == count - 1:
                kind = "visit"  # active customers' last activity counts as engagement
            amount = score = None
            attrs: dict[str, Any] = {}
            if kind == "order":
                value = rng.lognormvariate(4.0, 0.6)  # median ~55, mean ~66
                amount = Decimal(f"{value:.2f}")
                attrs = {"items": 1 + int(rng.expovariate(0.8))}
                if rng.random() < self.p_order_lot:
                    life = YEAR if rng.random() < 0.85 else 180 * DAY
                    lots.append([t, int(t + life), max(1, int(value))])
            elif kind in ("email_open", "email_click"):
                attrs = {"campaign": CAMPAIGNS[int(rng.random() * len(CAMPAIGNS))]}
            elif kind == "support":
                attrs = {"topic": TOPICS[int(rng.random() * len(TOPICS))]}
            elif kind == "nps":
                score = _nps_score(rng, quiet)
                attrs = {"survey": "post-purchase"}
            iid = self.next_interaction
            self.next_interaction += 1
            out.append((iid, cid, kind, t, amount, score, attrs, f"i{iid:09d}", t))
        self.pending += count
        return lots

    def _points(self, cid: str, lots: list[list[int]], created: int, end: int) -> None:
        """Bonus and soon-expiring lots, then FIFO redemptions over all of them."""
        rng, now = self.rng, self.now
        for _ in range(_poisson(rng, self.bonus_mean)):
            t = int(created + (end - created) * rng.random())
            lots.append([t, int(t + YEAR), BONUS_SIZES[int(rng.random() * len(BONUS_SIZES))]])
        if rng.random() < self.soon_share:
            earned = int(now - YEAR + 0.5 * DAY + 29.5 * DAY * rng.random())
            if earned >= created:
                lots.append([earned, int(earned + YEAR), BONUS_SIZES[int(rng.random() * 6)]])
        if not lots:
            return
        lots.sort(key=lambda lot: lot[0])
        first_id = self.next_lot
        self.next_lot += len(lots)
        remaining = [lot[2] for lot in lots]
        if rng.random() < REDEEMER_SHARE:
            k = 1
            while k < 6 and rng.random() < 0.35:
                k += 1
            lo = lots[0][0]
            hi = max(lo, end)
            for t in sorted(int(lo + (hi - lo) * rng.random()) for _ in range(k)):
                want = REDEEM_SIZES[int(rng.random() * len(REDEEM_SIZES))]
                self._redeem(cid, t, want, lots, remaining, first_id)
        self.buffers[2].extend(
            (first_id + i, cid, points, remaining[i], earned, expires,
             f"l{first_id + i:09d}")
            for i, (earned, expires, points) in enumerate(lots)
        )
        self.pending += len(lots)

    def _redeem(self, cid: str, t: int, want: int, lots: list[list[int]],
                remaining: list[int], first_id: int) -> None:
        """Take ``want`` points (or what the balance allows, in 50s) oldest lot first."""
        usable = [i for i, (earned, expires, _) in enumerate(lots)
                  if earned <= t < expires and remaining[i] > 0]
        balance = sum(remaining[i] for i in usable)
        take = want if want <= balance else balance // 50 * 50
        if take <= 0:
            return
        rid = self.next_redemption
        self.next_redemption += 1
        self.buffers[3].append((rid, cid, take, t, f"r{rid:09d}"))
        for i in usable:
            part = min(remaining[i], take)
            remaining[i] -= part
            take -= part
            self.buffers[4].append((rid, first_id + i, part))
            self.pending += 1
            if take == 0:
                break
        self.pending += 1
