"""The message lifecycle (SPEC §6): every state a message can be in, which moves
between them are allowed, and the only functions that move rows.

It sits in the database layer because every stage above writes states:
planning inserts ``planned``/``held_out`` rows and cancels preempted ones,
delivery claims and records outcomes, the HTTP side applies webhooks.

Nothing else writes ``message.status``: planning inserts rows in their first
state, and every later change is one of the functions below — an ``UPDATE …
WHERE status IN (expected)`` (and, for a claimed row, ``AND claim = token``)
whose row count says how many rows really moved. A move that finds fewer rows
than it was asked to move is logged, never silently dropped. The database
refuses any other state (a CHECK constraint).

::

    planned ─claim─▶ claimed ─start─▶ sending ──▶ sent ─webhook─▶ delivered | bounced | …
     ▲ ▲   │          │ │              │  ├──▶ retry ─claim─▶ claimed
     │ │   │          │ │              │  ├──▶ failed
     │ │   │          │ │              │  └──▶ unknown (timed out after the request left,
     │ │   │          │ │              │                or the worker died: lease lost)
     │ │   │          │ └─▶ cancelled | render_error | expired | failed   (no provider call)
     │ │   │          └─ release (stop, dead worker, window closed, bad credentials)
     │ │   │                        ─▶ planned | retry
     │ │   └──▶ cancelled (preempted) | expired
     │ └── requeue (an operator) ◀── unknown | failed | render_error | cancelled | expired
    planned ──(planner)── held_out    (the control group: recorded, never sent)

A **claim** reserves due messages for one worker under a lease (a random
token per claim, the lease on the database's clock on PostgreSQL). Only
``start`` makes a message ambiguous: the worker moves a handful of claimed
messages to ``sending`` just before their provider calls begin. So when a
worker dies, its reserved-but-unstarted messages go back to ``planned`` when
the lease runs out, and only what it had started becomes ``unknown``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, Table, and_, func, or_, select, union_all, update

from ..timeutil import ensure_utc, utcnow
from .bulk import all_rows, in_values, no_index, update_rows

log = logging.getLogger(__name__)


class State(StrEnum):
    PLANNED = "planned"  # waiting for send_after / next_attempt_at
    CLAIMED = "claimed"  # reserved by a worker under a lease; no provider call yet
    SENDING = "sending"  # its provider call has started (or is about to)
    SENT = "sent"  # the provider accepted it (provider_id kept)
    DELIVERED = "delivered"  # the provider's webhook says it arrived
    BOUNCED = "bounced"  # the provider's webhook says the address refused it
    UNDELIVERED = "undelivered"  # the carrier could not deliver the SMS
    RETRY = "retry"  # a transient error before the provider had it; due at next_attempt_at
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
    S.PLANNED: frozenset({S.CLAIMED, S.CANCELLED, S.EXPIRED}),
    S.RETRY: frozenset({S.CLAIMED, S.CANCELLED, S.EXPIRED}),
    S.CLAIMED: frozenset(
        {
            S.SENDING,
            S.PLANNED,  # released untouched
            S.RETRY,  # released untouched (it had been tried before)
            S.CANCELLED,
            S.RENDER_ERROR,
            S.EXPIRED,
            S.FAILED,
        }
    ),
    S.SENDING: frozenset(
        {
            S.SENT,
            S.RETRY,  # known not to have reached the provider
            S.FAILED,
            S.UNKNOWN,
            S.PLANNED,  # the provider refused our credentials: the message was not sent
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

MESSAGE_STATES = tuple(s.value for s in State)
# Due for a send attempt (subject to send_after / next_attempt_at).
DUE = (S.PLANNED, S.RETRY)
# Held by a worker: these rows carry a claim token and a lease.
HELD = (S.CLAIMED, S.SENDING)
# States an operator may re-queue (back to planned).
REQUEUEABLE = (S.UNKNOWN, S.FAILED, S.RENDER_ERROR, S.CANCELLED, S.EXPIRED)
# Occupies a frequency-cap slot: the customer got, or will get, this message.
CAP = (
    S.PLANNED,
    S.CLAIMED,
    S.SENDING,
    S.SENT,
    S.DELIVERED,
    S.BOUNCED,
    S.UNDELIVERED,
    S.RETRY,
    S.UNKNOWN,
)
# The campaign reached (or will reach) the customer, for reentry; the control
# group counts, so it follows the recipients' cadence.
REENTRY = (*CAP, S.HELD_OUT)
# Nothing will happen to these without a webhook or an operator.
SETTLED = frozenset(set(State) - set(DUE) - set(HELD))

LEASE_LOST = "lease expired while sending: the provider may or may not have it"
_RELEASED = {"claim": None, "lease_owner": None, "lease_expires_at": None}


def allowed(from_: State | str, to: State | str) -> bool:
    return State(to) in TRANSITIONS[State(from_)]


def waiting(attempts: int) -> State:
    """Where a message that was never handed to a provider goes back to."""
    return S.PLANNED if attempts == 0 else S.RETRY


@cache
def _message() -> Table:
    from .models import Message  # models imports this module for its state list

    return Message.__table__  # type: ignore[return-value]


def _now(conn: Connection, now: datetime | None) -> Any:
    """``now`` if given, else the database's clock on PostgreSQL (one clock for
    every host's leases) and this process's on SQLite (one host)."""
    if now is not None:
        return now
    return func.now() if conn.dialect.name == "postgresql" else utcnow()


def _check(sources: Iterable[State | str], to: State | str) -> tuple[list[State], State]:
    froms = [State(s) for s in sources]
    target = State(to)
    bad = [s for s in froms if target not in TRANSITIONS[s]]
    if bad:
        raise ValueError(f"illegal transition {', '.join(bad)} -> {target}")
    return froms, target


def _shortfall(
    asked: Sequence[Any], moved: int, froms: Sequence[State], to: State, event: str
) -> None:
    if moved != len(asked):
        log.info(
            "%d of %d messages were not %s: left as they were",
            len(asked) - moved,
            len(asked),
            "/".join(froms),
            extra={"event": f"{event}_skipped", "to": to.value, "message_ids": list(asked)[:20]},
        )


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
    (a webhook, a lease expiry, a requeue) got there first. Leaving the held
    states clears the claim and the lease."""
    froms, target = _check(from_, to)
    if not ids:
        return 0
    M = _message().c
    q = update(_message()).where(
        in_values(M.id, ids), no_index(M.status).in_([s.value for s in froms])
    )
    if claim is not None:
        q = q.where(M.claim == claim)
    sets = {"updated_at": utcnow(), **({} if target in HELD else _RELEASED), **(values or {})}
    moved = int(conn.execute(q.values(status=target.value, **sets)).rowcount)
    _shortfall(ids, moved, froms, target, event)
    return moved


def move_each(
    conn: Connection,
    rows: Sequence[Mapping[str, Any]],
    *,
    from_: Iterable[State | str],
    to: State | str,
    values: Mapping[str, Any] | None = None,
    event: str = "message_move",
) -> int:
    """``move`` with values per row, in one statement: each row has ``id``,
    ``claim`` (the guard: the token the row must still hold) and the columns
    to set for it; ``values`` are set on every row."""
    froms, target = _check(from_, to)
    if not rows:
        return 0
    released = {} if target in HELD else _RELEASED
    sets = {"status": target.value, "updated_at": utcnow(), **released, **(values or {})}
    table = _message()
    moved = update_rows(
        conn,
        table,
        rows,
        keys=("id", "claim"),
        values=sets,
        # by key, never by the status index: that would scan every row in the state
        where=[no_index(table.c.status).in_([s.value for s in froms])],
    )
    _shortfall([r["id"] for r in rows], moved, froms, target, event)
    return moved


@dataclass(frozen=True)
class ClaimedRow:
    id: int
    campaign: str
    customer_id: str
    channel: str
    template: str
    attempts: int
    expires_at: datetime | None
    claim: str


def claim(
    conn: Connection,
    *,
    token: str,
    owner: str,
    limit: int,
    lease: timedelta,
    due_by: datetime | None = None,
    campaign: str | None = None,
    channels: Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[ClaimedRow]:
    """Reserve up to ``limit`` due messages (``planned``/``retry`` → ``claimed``)
    under ``token``, with a lease of ``lease`` from ``now`` (default: the
    database clock on PostgreSQL, this process's on SQLite).

    ``due_by`` decides what is due (an ``--at`` moment; default: now).
    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets any number of workers claim
    disjoint rows. SQLite: the UPDATE is one write transaction.
    """
    M = _message().c
    now = _now(conn, now)
    due_at = now if due_by is None else due_by
    filters = [
        M.send_after <= due_at,
        or_(M.next_attempt_at.is_(None), M.next_attempt_at <= due_at),
    ]
    if campaign is not None:
        filters.append(M.campaign == campaign)
    if channels is not None:
        filters.append(M.channel.in_(list(channels)))
    postgres = conn.dialect.name == "postgresql"

    def oldest(state: State) -> Any:
        """One due state's oldest messages: the (status, send_after) index read
        in order, ``limit`` rows at most, however long the backlog. (With both
        states in one ``IN``, the database sorts every due message first.)"""
        q = select(M.id, M.send_after).where(M.status == state.value, *filters)
        q = q.order_by(M.send_after, M.id).limit(limit)
        # PostgreSQL: any number of workers claim disjoint rows; the picked rows
        # are locked, so they are still due when the UPDATE finds them by key.
        return (q.with_for_update(skip_locked=True) if postgres else q).subquery(state.value)

    branches = [oldest(state) for state in DUE]
    due = union_all(*(select(b.c.id, b.c.send_after) for b in branches)).subquery("due")
    # A CTE runs once (as ``id IN (subquery)`` PostgreSQL may re-run the
    # SKIP LOCKED subqueries and claim more than ``limit``).
    picked = select(due.c.id).order_by(due.c.send_after, due.c.id).limit(limit).cte("picked")
    target: ColumnElement[bool] = M.id == picked.c.id
    stmt = (
        update(_message())
        .where(target)
        .values(
            status=S.CLAIMED.value,
            claim=token,
            lease_owner=owner,
            lease_expires_at=now + lease,
            updated_at=now,
        )
    )
    cols = (M.id, M.campaign, M.customer_id, M.channel, M.template, M.attempts, M.expires_at)
    if postgres:
        rows = [_claimed(row, row[6], token) for row in conn.execute(stmt.returning(*cols))]
    else:
        # SQLite hands back RETURNING rows one step at a time, each step
        # releasing and retaking the GIL: with a hundred send threads about,
        # every retake waits. Read the claim back as one JSON array instead.
        conn.execute(stmt)
        mine = select(*cols).where(M.claim == token, M.status == S.CLAIMED.value)
        rows = [_claimed(row, _instant(row[6]), token) for row in all_rows(conn, mine)]
    return sorted(rows, key=lambda r: r.id)


def _claimed(row: Sequence[Any], expires_at: datetime | None, token: str) -> ClaimedRow:
    id_, campaign, customer_id, channel, template, attempts = row[:6]
    return ClaimedRow(id_, campaign, customer_id, channel, template, attempts, expires_at, token)


def _instant(value: Any) -> datetime | None:
    """An instant as SQLite's JSON gives it back (text), timezone-aware UTC."""
    return None if value is None else ensure_utc(datetime.fromisoformat(value))


def start(
    conn: Connection,
    ids: Sequence[int],
    *,
    claim: str,
    lease: timedelta,
    now: datetime | None = None,
) -> list[int]:
    """``claimed`` → ``sending`` for the rows of ``ids`` that still hold
    ``claim``, just before their provider calls: from here on a crash makes
    them ``unknown``. Counts the attempt and renews the lease. Returns the ids
    that moved (only those may be sent)."""
    if not ids:
        return []
    M = _message().c
    at = _now(conn, now)
    mine = [in_values(M.id, ids), no_index(M.status) == S.CLAIMED.value, M.claim == claim]
    stmt = (
        update(_message())
        .where(*mine)
        .values(
            status=S.SENDING.value,
            attempts=M.attempts + 1,
            lease_expires_at=at + lease,
            updated_at=at,
        )
    )
    if conn.dialect.name == "postgresql":
        started = [i for (i,) in conn.execute(stmt.returning(M.id))]
    else:  # no RETURNING on SQLite, see ``claim``; all moved is the usual case
        moved = conn.execute(stmt).rowcount
        started = list(ids)
        if moved != len(ids):
            again = select(M.id).where(in_values(M.id, ids), M.claim == claim)
            started = [i for (i,) in all_rows(conn, again.where(M.status == S.SENDING.value))]
    _shortfall(ids, len(started), [S.CLAIMED], S.SENDING, "message_start")
    return started


def renew(
    conn: Connection, claims: Sequence[str], *, lease: timedelta, now: datetime | None = None
) -> int:
    """Extend the lease of every row still held under ``claims`` (a live
    worker's heartbeat): only a dead worker's leases run out. Returns the rows
    renewed."""
    if not claims:
        return 0
    M = _message().c
    at = _now(conn, now)
    held = [no_index(M.status).in_([s.value for s in HELD]), in_values(M.claim, claims)]
    return int(
        conn.execute(update(_message()).where(*held).values(lease_expires_at=at + lease)).rowcount
    )


class Expired(NamedTuple):
    released: int  # reserved by a worker that is gone: planned (or retry) again
    unknown: int  # started by a worker that is gone: may have reached the provider


def expire_leases(conn: Connection, now: datetime | None = None) -> Expired:
    """Rows whose lease ran out (at ``now``; default: the database clock):
    ``claimed`` ones go back to the queue untouched, ``sending`` ones become
    ``unknown`` — never sent again automatically."""
    M = _message().c
    at = _now(conn, now)
    lapsed = M.lease_expires_at < at
    released = 0
    for attempted, back in ((M.attempts == 0, S.PLANNED), (M.attempts > 0, S.RETRY)):
        released += conn.execute(
            update(_message())
            .where(M.status == S.CLAIMED.value, lapsed, attempted)
            .values(status=back.value, updated_at=at, **_RELEASED)
        ).rowcount
    unknown = conn.execute(
        update(_message())
        .where(M.status == S.SENDING.value, lapsed)
        .values(status=S.UNKNOWN.value, error=LEASE_LOST, updated_at=at, **_RELEASED)
    ).rowcount
    return Expired(int(released), int(unknown))


def requeue_filter(
    *,
    ids: Sequence[int] | None = None,
    statuses: Sequence[State | str] | None = None,
    campaign: str | None = None,
    since: datetime | None = None,
) -> ColumnElement[bool]:
    """The re-queueable messages matching every filter given."""
    M = _message().c
    wanted = [State(s) for s in statuses] if statuses else list(REQUEUEABLE)
    bad = [s for s in wanted if s not in REQUEUEABLE]
    if bad:
        ok = ", ".join(REQUEUEABLE)
        raise ValueError(f"{', '.join(bad)} cannot be re-queued (only {ok})")
    cond: ColumnElement[bool] = M.status.in_([s.value for s in wanted])
    if ids is not None:
        cond = and_(cond, M.id.in_(list(ids)))
    if campaign is not None:
        cond = and_(cond, M.campaign == campaign)
    if since is not None:
        cond = and_(cond, M.updated_at >= since)
    return cond


def requeue(conn: Connection, where: ColumnElement[bool], now: datetime) -> list[int]:
    """Re-queue the messages ``where`` selects (see ``requeue_filter``): the only
    way an ``unknown`` message is ever sent again. Returns the ids that moved."""
    M = _message().c
    stmt = (
        update(_message())
        .where(where)
        .values(
            status=S.PLANNED.value,
            send_after=now,
            next_attempt_at=None,
            attempts=0,
            error=None,
            updated_at=now,
            **_RELEASED,
        )
        .returning(M.id)
    )
    return sorted(i for (i,) in conn.execute(stmt))
