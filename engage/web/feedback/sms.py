"""Twilio status callbacks and inbound SMS -> message states, suppressions,
consent, interactions (SPEC §8, docs/http.md).

Status callbacks: ``delivered`` -> ``delivered``; ``undelivered`` and
``failed`` -> the same states with Twilio's error code kept in
``message.error``. Error 30005 (unknown destination) and 30006 (landline or
unreachable carrier) suppress the number as ``invalid_address``; 21610 (the
recipient opted out) as ``sms_stop``; 30003 (handset off, out of coverage)
and every other code only record. A callback is matched to the outbox by
its MessageSid (``message.provider_id``).

Inbound messages: a one-word reply that is one of the opt-out keywords
Twilio honours (case, surrounding blanks and punctuation ignored, as carriers
do: "Stop." opts out, "stop please" is a reply) suppresses the number
(``sms_stop``) and clears ``sms_opt_in`` of every customer with that phone;
START, YES and UNSTOP lift an ``sms_stop``/``unsubscribe`` suppression and set
``sms_opt_in`` again; HELP becomes an ``sms_help`` interaction (Twilio answers
it itself); anything else is an ``sms_reply`` interaction, which counts as
activity. When Twilio's Advanced Opt-Out classified the message
(``OptOutType``), that classification is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, select

from ...db.models import Customer, Message
from ...db.states import State, move
from ...planning import suppressions
from ...planning.suppressions import NewSuppression
from .ledger import (
    APPLIED,
    DUPLICATE,
    IGNORED,
    STALE,
    UNKNOWN,
    add_interactions,
    claim,
    set_consent,
)

PROVIDER = "twilio"
M = cast(Table, Message.__table__)
C = cast(Table, Customer.__table__)

STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
)
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
HELP_WORDS = frozenset({"HELP"})
_EDGES = re.compile(r"^[\W_]+|[\W_]+$")

_MOVES: dict[str, tuple[State, tuple[State, ...]]] = {
    "delivered": (State.DELIVERED, (State.SENT, State.UNKNOWN)),
    "undelivered": (State.UNDELIVERED, (State.SENT, State.UNKNOWN)),
    "failed": (State.FAILED, (State.SENT, State.UNKNOWN)),
}
_SUPPRESS_CODES = {"30005": "invalid_address", "30006": "invalid_address", "21610": "sms_stop"}
REPLY_CHARS = 1600  # Twilio's own limit for one message body


def keyword(body: str | None, opt_out_type: str | None = None) -> str | None:
    """``stop``, ``start``, ``help`` or None (an ordinary reply)."""
    if opt_out_type:
        kind = opt_out_type.strip().lower()
        if kind in ("stop", "start", "help"):
            return kind
    word = _EDGES.sub("", (body or "").strip()).upper()
    if not word or any(ch.isspace() for ch in word):
        return None
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None


@dataclass(frozen=True, slots=True)
class StatusResult:
    kind: str  # Twilio's MessageStatus
    outcome: str
    message_id: int | None = None


def apply_twilio_status(
    conn: Connection,
    sid: str,
    status: str,
    error_code: str | None,
    to: str | None,
    now: datetime,
) -> StatusResult:
    """Apply one status callback inside the caller's transaction."""
    kind = status.lower()[:32]
    row = conn.execute(
        select(M.c.id, M.c.status, M.c.customer_id, M.c.campaign, M.c.address)
        .where(M.c.provider_id == sid, M.c.channel == "sms")
        .limit(1)
    ).first()
    if row is None:  # not recorded as seen: its send may be being recorded right now
        return StatusResult(kind, UNKNOWN)
    if not claim(conn, PROVIDER, [(f"{sid}:{kind}", kind)], now):
        return StatusResult(kind, DUPLICATE)
    mid, current, customer_id, campaign, address = row
    if kind not in _MOVES:
        return StatusResult(kind, IGNORED, mid)
    target, sources = _MOVES[kind]
    outcome = STALE
    if current in sources:
        values = None
        if target != State.DELIVERED:
            values = {"error": f"Twilio {kind}" + (f": error {error_code}" if error_code else "")}
        if move(conn, [mid], from_=sources, to=target, values=values, event="webhook_move"):
            outcome = APPLIED
    reason = _SUPPRESS_CODES.get(error_code or "")
    number = to or address
    if reason and number and kind != "delivered":
        suppressions.insert(
            conn,
            [
                NewSuppression(
                    "sms", number, customer_id, reason, f"twilio {error_code}", campaign, mid
                )
            ],
            now,
        )
        outcome = APPLIED
    return StatusResult(kind, outcome, mid)


def apply_twilio_inbound(
    conn: Connection,
    sid: str,
    number: str,
    body: str | None,
    opt_out_type: str | None,
    now: datetime,
    extra: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Apply one inbound SMS inside the caller's transaction; returns (kind, outcome)
    with kind one of ``stop``, ``start``, ``help``, ``reply``."""
    kind = keyword(body, opt_out_type) or "reply"
    if not claim(conn, PROVIDER, [(sid, kind)], now):
        return kind, DUPLICATE
    customers = sorted(conn.execute(select(C.c.id).where(C.c.phone == number)).scalars())
    if kind == "stop":
        last = _last_sms(conn, customers)
        entry = NewSuppression(
            "sms",
            number,
            customers[0] if customers else None,
            "sms_stop",
            "twilio inbound",
            last[1] if last else None,
            last[0] if last else None,
        )
        suppressions.insert(conn, [entry], now)
        set_consent(conn, "sms", customers, False, now)
        return kind, APPLIED
    if kind == "start":
        suppressions.lift(conn, "sms", ("sms_stop", "unsubscribe"), address=number)
        for cid in customers:
            suppressions.lift(conn, "sms", ("sms_stop", "unsubscribe"), customer_id=cid)
        set_consent(conn, "sms", customers, True, now)
        return kind, APPLIED
    if not customers:
        return kind, UNKNOWN
    attributes = dict(extra or {})
    if kind == "reply":
        attributes["body"] = (body or "")[:REPLY_CHARS]
    rows = [
        {
            "customer_id": cid,
            "kind": "sms_reply" if kind == "reply" else "sms_help",
            "occurred_at": now,
            "attributes": attributes,
            "external_id": f"twilio:{sid}" + (f":{cid}" if len(customers) > 1 else ""),
        }
        for cid in customers
    ]
    add_interactions(conn, rows, now)
    return kind, APPLIED


def _last_sms(conn: Connection, customers: list[str]) -> tuple[int, str] | None:
    """(id, campaign) of the latest SMS sent to these customers: what a STOP answers."""
    if not customers:
        return None
    row = conn.execute(
        select(M.c.id, M.c.campaign)
        .where(
            M.c.customer_id.in_(customers),
            M.c.channel == "sms",
            M.c.sent_at.is_not(None),
        )
        .order_by(M.c.sent_at.desc(), M.c.id.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row else None
