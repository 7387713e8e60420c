"""The message lifecycle (SPEC §6): every state a message can be in, which moves
between them are allowed, and the function that moves rows.

It sits in the database layer because every stage above writes states:
planning inserts ``planned``/``held_out`` rows and cancels preempted ones,
delivery claims and records outcomes, the HTTP side applies webhooks.

Nothing else writes ``message.status``: planning inserts rows in their first
state, and every later change is a ``move`` — one ``UPDATE … WHERE status IN
(expected)`` (and, for a claimed row, ``AND claim = token``) whose row count
says how many rows really moved. A move that finds nothing to move is logged,
never silently dropped.

::

    planned ──claim──▶ sending ──▶ sent ──webhook──▶ delivered | bounced | undelivered
       ▲  │               │  └──▶ retry ──claim──▶ sending
       │  │               ├──▶ failed | render_error | cancelled | expired
       │  │               └──▶ unknown (a timeout after the request left, or a lost lease)
       │  └──▶ expired | cancelled
       └── requeue (an operator) ◀── unknown | failed | render_error | cancelled | expired
    planned ──(planner)── held_out    (the control group: recorded, never sent)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, update

log = logging.getLogger(__name__)


class State(StrEnum):
    PLANNED = "planned"  # waiting for send_after / next_attempt_at
    SENDING = "sending"  # claimed by a worker under a lease
    SENT = "sent"  # the provider accepted it (provider_id kept)
    DELIVERED = "delivered"  # the provider's webhook says it arrived
    BOUNCED = "bounced"  # the provider's webhook says the address refused it
    UNDELIVERED = "undelivered"  # the carrier could not deliver the SMS
    RETRY = "retry"  # a transient error; due again at next_attempt_at
    FAILED = "failed"  # a permanent error, or out of attempts
    UNKNOWN = "unknown"  # may have reached the provider: never sent again automatically
    HELD_OUT = "held_out"  # the campaign's control group
    RENDER_ERROR = "render_error"  # the template failed for this customer
    CANCELLED = "cancelled"  # consent or suppression changed after planning, or preempted
    EXPIRED = "expired"  # waited longer than the campaign's expires_after


S = State
# Every allowed move, from -> to. Webhooks move sent (and unknown: the provider
# proves an ambiguous send happened) forward, never backwards.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    S.PLANNED: frozenset({S.SENDING, S.CANCELLED, S.EXPIRED}),
    S.RETRY: frozenset({S.SENDING, S.CANCELLED, S.EXPIRED, S.PLANNED}),
    S.SENDING: frozenset(
        {
            S.SENT,
            S.RETRY,
            S.FAILED,
            S.UNKNOWN,
            S.RENDER_ERROR,
            S.CANCELLED,
            S.EXPIRED,
            S.PLANNED,  # released untouched: never handed to a provider
        }
    ),
    S.SENT: frozenset({S.DELIVERED, S.BOUNCED, S.UNDELIVERED, S.FAILED}),
    S.UNKNOWN: frozenset({S.SENT, S.DELIVERED, S.BOUNCED, S.UNDELIVERED, S.FAILED, S.PLANNED}),
    S.DELIVERED: frozenset({S.BOUNCED}),  # a late bounce after a delivery receipt
    S.BOUNCED: frozenset(),
    S.UNDELIVERED: frozenset(),
    S.FAILED: frozenset({S.PLANNED}),  # requeue
    S.RENDER_ERROR: frozenset({S.PLANNED}),  # requeue
    S.CANCELLED: frozenset({S.PLANNED}),  # requeue
    S.EXPIRED: frozenset({S.PLANNED}),  # requeue
    S.HELD_OUT: frozenset(),
}

# Due for a send attempt (subject to send_after / next_attempt_at).
DUE = (S.PLANNED, S.RETRY)
# States an operator may re-queue (back to planned).
REQUEUEABLE = (S.UNKNOWN, S.FAILED, S.RENDER_ERROR, S.CANCELLED, S.EXPIRED)
# Occupies a frequency-cap slot: the customer got, or will get, this message.
CAP = (S.PLANNED, S.SENDING, S.SENT, S.DELIVERED, S.BOUNCED, S.UNDELIVERED, S.RETRY, S.UNKNOWN)
# The campaign reached (or will reach) the customer, for reentry; the control
# group counts, so it follows the recipients' cadence.
REENTRY = (*CAP, S.HELD_OUT)


def allowed(from_: State | str, to: State | str) -> bool:
    return State(to) in TRANSITIONS[State(from_)]


def move(
    conn: Connection,
    ids: Sequence[int],
    *,
    from_: Iterable[State | str],
    to: State | str,
    claim: str | None = None,
    values: Mapping[str, Any] | None = None,
    event: str = "message_move",
) -> int:
    """Move the rows ``ids`` that are in one of ``from_`` (and hold ``claim``,
    when given) to ``to``, setting ``values`` too. Returns how many moved; a
    shortfall is logged with the ids asked for, since it means another actor
    (a webhook, a lease expiry, a requeue) got there first."""
    sources = [State(s) for s in from_]
    target = State(to)
    bad = [s for s in sources if target not in TRANSITIONS[s]]
    if bad:
        raise ValueError(f"illegal transition {', '.join(bad)} -> {target}")
    if not ids:
        return 0
    from .models import Message  # models imports this module for its state list

    M = Message.__table__.c
    q = update(Message).where(M.id.in_(list(ids)), M.status.in_([s.value for s in sources]))
    if claim is not None:
        q = q.where(M.lease_owner == claim)
    moved = conn.execute(q.values(status=target.value, **dict(values or {}))).rowcount
    if moved != len(ids):
        log.info(
            "%d of %d messages were not in %s: left as they were",
            len(ids) - moved,
            len(ids),
            "/".join(sources),
            extra={"event": f"{event}_skipped", "to": target.value, "message_ids": list(ids)[:20]},
        )
    return int(moved)
