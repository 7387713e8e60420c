"""Pure decisions of SPEC §5: who gets a message, on which channel, when — or why not.

No I/O here. The planner loads the facts (recipient, suppressions, history)
in bulk and calls ``decide`` once per customer; ``dry-run`` calls the same
function and writes nothing. Reasons are stable strings used in JSON output
and in ``campaign_run.counts``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from ..config import Config, FrequencyCap, Window
from ..customers.recipients import Recipient
from ..timeutil import get_zone

Action = Literal["send", "skip"]

# Skip reasons, in the order the rules are applied.
NO_ADDRESS = "no_address"
INVALID_ADDRESS = "invalid_address"
NO_CONSENT = "no_consent"
SUPPRESSED = "suppressed"
REENTRY = "reentry"
HELD_OUT = "held_out"
FREQUENCY_CAP = "frequency_cap"
RENDER_ERROR = "render_error"
REASONS = (NO_ADDRESS, INVALID_ADDRESS, NO_CONSENT, SUPPRESSED, REENTRY, HELD_OUT, FREQUENCY_CAP)

# ZoneInfo's own cache keeps only 8 zones strongly; a shop's customers span dozens,
# so without this every decision re-read a tzdata file (a third of planning time).
_zone = lru_cache(maxsize=1024)(get_zone)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")

@dataclass(frozen=True)
class Suppressions:
    """Suppressed (channel, address) pairs and (channel, customer) pairs."""

    addresses: frozenset[tuple[str, str]] = frozenset()
    customers: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, rows: Iterable[tuple[str, str, str | None]]) -> Suppressions:
        addresses, customers = set(), set()
        for channel, address, customer_id in rows:
            addresses.add((channel, normalize_address(channel, address)))
            if customer_id:
                customers.add((channel, customer_id))
        return cls(frozenset(addresses), frozenset(customers))

    def blocks(self, channel: str, address: str, customer_id: str) -> bool:
        return (channel, normalize_address(channel, address)) in self.addresses or (
            channel,
            customer_id,
        ) in self.customers


@dataclass(frozen=True)
class History:
    """What engage already did for one customer, as the planner loaded it."""

    last_sent: datetime | None = None  # this campaign, latest message in states.REENTRY
    cap_used: int = 0  # states.CAP messages of cap-counting campaigns in the cap period
    preemptable: int = 0  # of those, planned-not-sent messages of lower-priority campaigns


@dataclass(frozen=True)
class CampaignRules:
    """The parts of a campaign that the rules read (built from a Campaign)."""

    name: str
    channels: Sequence[str]
    reentry: str | timedelta = "after_activity"
    holdout: float = 0.0
    priority: int = 50
    exempt_from_frequency_cap: bool = False
    send_window: Window | None = None

    @classmethod
    def of(cls, campaign: Any) -> CampaignRules:
        return cls(
            name=campaign.name,
            channels=tuple(campaign.channels),
            reentry=campaign.reentry,
            holdout=campaign.holdout,
            priority=campaign.priority,
            exempt_from_frequency_cap=campaign.exempt_from_frequency_cap,
            send_window=campaign.send_window,
        )


@dataclass(frozen=True)
class Decision:
    customer_id: str
    action: Action
    reason: str | None = None
    channel: str | None = None
    address: str | None = None
    send_at: datetime | None = None
    preempts: bool = False  # takes a cap slot from a lower-priority planned message
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        return self.reason == HELD_OUT


def normalize_address(channel: str, address: str) -> str:
    return address.strip().lower() if channel == "email" else address.strip()


def reachability(
    recipient: Recipient, channel: str, config: Config
) -> tuple[str | None, str | None]:
    """(address, None) when the channel can reach the customer, else (address, reason)."""
    if channel == "email":
        address = recipient.email
        if not address:
            return None, NO_ADDRESS
        if not _EMAIL.match(address):
            return address, INVALID_ADDRESS
        if config.require_email_opt_in and not recipient.email_opt_in:
            return address, NO_CONSENT
        return address, None
    if channel == "sms":
        address = recipient.phone
        if not address:
            return None, NO_ADDRESS
        if not _E164.match(address):
            return address, INVALID_ADDRESS
        if not recipient.sms_opt_in:  # SMS consent is always required
            return address, NO_CONSENT
        return address, None
    raise ValueError(f"unknown channel {channel!r}")


def choose_channel(
    recipient: Recipient, channels: Sequence[str], config: Config, suppressions: Suppressions
) -> tuple[str | None, str | None, str | None]:
    """First reachable, unsuppressed channel wins: (channel, address, None).

    When none is usable the reason is the first channel's (the campaign's
    preferred one): (None, None, reason).
    """
    first_reason: str | None = None
    for channel in channels:
        address, reason = reachability(recipient, channel, config)
        if reason is None and address is not None:
            if not suppressions.blocks(channel, address, recipient.customer_id):
                return channel, address, None
            reason = SUPPRESSED
        first_reason = first_reason or reason
    return None, None, first_reason


def reentry_allows(
    reentry: str | timedelta, last_sent: datetime | None, last_activity: datetime, as_of: datetime
) -> bool:
    """``once``: never again; ``after_activity``: only after new activity since the
    last send; a duration: not again within that time."""
    if last_sent is None:
        return True
    if reentry == "once":
        return False
    if reentry == "after_activity":
        return last_activity > last_sent
    if isinstance(reentry, timedelta):
        return as_of - last_sent >= reentry
    raise ValueError(f"unknown reentry rule {reentry!r}")


def holdout_bucket(campaign: str, customer_id: str) -> float:
    """A stable number in [0, 1) for (campaign, customer): the same across runs,
    processes and machines, independent between campaigns."""
    digest = hashlib.sha256(f"{campaign}\x00{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(campaign: str, customer_id: str, share: float) -> bool:
    return share > 0 and holdout_bucket(campaign, customer_id) < share


def effective_window(channel: str, campaign_window: Window | None, config: Config) -> Window:
    """The campaign's window if set, else the channel default; SMS is always
    clipped to the config SMS window (itself within 08:00-21:00)."""
    default = config.window_for(channel)
    if campaign_window is None:
        return default
    if channel != "sms":
        return campaign_window
    if campaign_window.start > campaign_window.end:  # wraps midnight: cannot fit SMS rules
        return default
    start = max(campaign_window.start, default.start)
    end = min(campaign_window.end, default.end)
    return Window(start=start, end=end) if start < end else default


def in_window(local: time, window: Window) -> bool:
    if window.start < window.end:
        return window.start <= local < window.end
    return local >= window.start or local < window.end  # wraps midnight


def next_send_time(as_of: datetime, zone: ZoneInfo, window: Window) -> datetime:
    """``as_of`` when it is inside the local window, else the window's next
    opening, DST-correct. Never earlier than ``as_of``."""
    local = as_of.astimezone(zone)
    if in_window(local.time().replace(tzinfo=None), window):
        return as_of
    day = local.date()
    for offset in range(3):
        candidate = datetime.combine(day + timedelta(days=offset), window.start, tzinfo=zone)
        # A start time that falls in a spring-forward gap maps to just after it.
        candidate = candidate.astimezone(as_of.tzinfo)
        if candidate > as_of:
            return candidate
    raise AssertionError("unreachable: a window opens every day")


@lru_cache(maxsize=4096)
def _send_time(as_of: datetime, timezone: str, start: time, end: time) -> datetime:
    """``next_send_time`` per (instant, zone, window): a plan evaluates every
    customer at one instant, and customers share a few dozen zones, so this
    computes a few dozen answers instead of one per customer."""
    return next_send_time(as_of, _zone(timezone), Window(start=start, end=end))


def next_opening(as_of: datetime, timezone: str, window: Window) -> datetime:
    """``next_send_time`` in the zone named ``timezone`` (cached, see ``_send_time``):
    the planner asks it when it plans, the dispatcher again when it sends."""
    return _send_time(as_of, timezone, window.start, window.end)


def decide(
    recipient: Recipient,
    rules: CampaignRules,
    config: Config,
    as_of: datetime,
    suppressions: Suppressions,
    history: History,
    cap: FrequencyCap | None = None,
) -> Decision:
    """Apply SPEC §5 in order for one customer already in the audience."""
    cid = recipient.customer_id
    channel, address, reason = choose_channel(recipient, rules.channels, config, suppressions)
    if channel is None or address is None:
        return Decision(cid, "skip", reason)
    if not reentry_allows(rules.reentry, history.last_sent, recipient.last_activity, as_of):
        return Decision(cid, "skip", REENTRY, channel, address)
    window = effective_window(channel, rules.send_window, config)
    send_at = next_opening(as_of, recipient.timezone, window)
    if is_held_out(rules.name, cid, rules.holdout):
        return Decision(cid, "skip", HELD_OUT, channel, address, send_at)
    preempts = False
    cap = cap or config.frequency_cap
    if not rules.exempt_from_frequency_cap and history.cap_used >= cap.max_messages:
        if history.cap_used - history.preemptable >= cap.max_messages:
            return Decision(cid, "skip", FREQUENCY_CAP, channel, address)
        preempts = True
    return Decision(cid, "send", None, channel, address, send_at, preempts)
