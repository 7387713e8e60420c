"""Claim due messages, render them from current data, send, record — at most once.

The order of operations is the guarantee: a message is marked ``sending``
with a lease and *committed* before the provider is called. If the process
dies after that, the row stays ``sending`` until its lease runs out and then
becomes ``unknown``; nothing resends it unless an operator re-queues it.
Transient failures retry with exponential backoff and jitter (honouring
``Retry-After``) up to ``max_attempts``; permanent failures never retry.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, and_, bindparam, or_, select, update

from . import suppressions
from .channels.base import Channel, Outgoing
from .config import Config
from .db.models import Message
from .errors import EngageError, PermanentSendError, SendError, TransientSendError
from .policy import Suppressions, reachability
from .recipients import Recipient, load_recipients
from .timeutil import utcnow

log = logging.getLogger(__name__)
M = cast(Table, Message.__table__)

DUE_STATES = ("planned", "retry")
REQUEUE_STATES = ("unknown", "failed", "render_error", "cancelled")

# Outcomes are written by the batch thread in chunks: at most this many, or
# after this long, so few sent-but-unrecorded rows exist at any moment (a crash
# leaves them ``sending`` -> ``unknown``: correct, but noisy).
RECORD_EVERY = 50
RECORD_SECONDS = 0.5


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff_delay(
    attempt: int,
    base: timedelta,
    cap: timedelta,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> timedelta:
    """Exponential backoff with jitter for the ``attempt``-th failure (1-based).

    The delay is drawn from [½·d, d] where d = min(cap, base·2^(attempt-1)),
    and is never shorter than the provider's ``Retry-After``.
    """
    rng = rng or random.Random()
    exp = min(cap.total_seconds(), base.total_seconds() * 2 ** max(attempt - 1, 0))
    delay = rng.uniform(exp / 2, exp)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return timedelta(seconds=delay)


class TokenBucket:
    """Thread-safe rate limiter: at most ``rate`` acquisitions per second on average,
    bursts of at most ``burst``."""

    def __init__(
        self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ):
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a token; False if ``stop`` was set while waiting."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = (1 - self._tokens) / self.rate
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


@dataclass
class Claimed:
    id: int
    campaign: str
    customer_id: str
    channel: str
    template: str
    attempts: int


@dataclass
class Outcome:
    """What happened to one claimed message, computed by a worker thread and
    written by the batch thread together with the others of its chunk.

    ``status`` ``released`` gives the message back (never handed to a provider);
    any other status is final for this attempt, with ``values`` the extra
    columns to set. ``suppress`` is a suppression row to add first.
    """

    msg: Claimed
    status: str
    values: dict[str, Any] = field(default_factory=dict)
    suppress: tuple[str, str, str | None, str, str | None] | None = None


@dataclass
class DispatchStats:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, other: DispatchStats) -> None:
        self.claimed += other.claimed
        self.outcomes.update(other.outcomes)


def claim(
    engine: Engine,
    owner: str,
    now: datetime,
    limit: int,
    lease: timedelta,
    *,
    campaign: str | None = None,
    wall_now: datetime | None = None,
) -> list[Claimed]:
    """Atomically move up to ``limit`` due messages to ``sending`` under a lease.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets any number of workers claim
    disjoint rows. SQLite: the UPDATE is one write transaction. ``now`` decides
    what is due (it may be an ``--at`` moment); the lease runs on the wall
    clock (``wall_now``, default ``now``), because lease expiry does.
    """
    wall_now = wall_now or now
    due = and_(
        M.c.status.in_(DUE_STATES),
        M.c.send_after <= now,
        or_(M.c.next_attempt_at.is_(None), M.c.next_attempt_at <= now),
    )
    if campaign is not None:
        due = and_(due, M.c.campaign == campaign)
    pick = select(M.c.id).where(due).order_by(M.c.send_after, M.c.id).limit(limit)
    if engine.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    # A CTE runs once. (As ``id IN (subquery)`` PostgreSQL may re-run the
    # SKIP LOCKED subquery, which then skips the rows just updated and claims
    # far more than ``limit``.)
    picked = pick.cte("picked")
    stmt = (
        update(M)
        .where(M.c.id == picked.c.id, due)
        .values(
            status="sending",
            lease_owner=owner,
            lease_expires_at=wall_now + lease,
            attempts=M.c.attempts + 1,
            updated_at=wall_now,
        )
        .returning(M.c.id, M.c.campaign, M.c.customer_id, M.c.channel, M.c.template, M.c.attempts)
    )
    with engine.begin() as conn:
        rows = conn.execute(stmt).all()
    return sorted((Claimed(*r) for r in rows), key=lambda c: c.id)


def expire_leases(engine: Engine, now: datetime) -> int:
    """``sending`` rows whose lease ran out become ``unknown``: the send may have
    reached the provider, so it is never retried automatically."""
    with engine.begin() as conn:
        result = conn.execute(
            update(M)
            .where(M.c.status == "sending", M.c.lease_expires_at < now)
            .values(
                status="unknown",
                error="lease expired while sending: the provider may or may not have it",
                updated_at=now,
            )
            .returning(M.c.id)
        )
        return len(result.all())


def requeue(engine: Engine, ids: Sequence[int], now: datetime) -> dict[int, str]:
    """Explicitly re-queue messages (the only way ``unknown`` is ever retried).

    Returns what happened to each id: ``requeued``, ``not found`` or
    ``not requeueable (<status>)``.
    """
    out: dict[int, str] = {}
    with engine.begin() as conn:
        found = {i: st for i, st in conn.execute(select(M.c.id, M.c.status).where(M.c.id.in_(ids)))}
        ok = [i for i in ids if found.get(i) in REQUEUE_STATES]
        if ok:
            conn.execute(
                update(M)
                .where(M.c.id.in_(ok), M.c.status.in_(REQUEUE_STATES))
                .values(
                    status="planned",
                    next_attempt_at=None,
                    send_after=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=0,
                    error=None,
                    updated_at=now,
                )
            )
    for i in ids:
        status = found.get(i)
        out[i] = (
            "not found"
            if status is None
            else "requeued"
            if status in REQUEUE_STATES
            else f"not requeueable ({status})"
        )
    return out


class Dispatcher:
    """Sends due messages through the configured channels with a bounded pool."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        channels: Mapping[str, Channel],
        renderer: Any,
        campaigns: Callable[[], Mapping[str, Any]],
        *,
        owner: str | None = None,
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
    ):
        self.engine = engine
        self.config = config
        self.channels = channels
        self.renderer = renderer
        self.campaigns = campaigns
        self.owner = owner or default_owner()
        self.stop = stop or threading.Event()
        self.rng = rng or random.Random()
        d = config.channels
        self.buckets = {
            "email": TokenBucket(d.sendgrid.rate_per_second if d.email == "sendgrid" else 1000.0),
            "sms": TokenBucket(d.twilio.rate_per_second if d.sms == "twilio" else 1000.0),
        }
        self.pool = ThreadPoolExecutor(
            max_workers=config.dispatch.workers, thread_name_prefix="engage-send"
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # -- one round ---------------------------------------------------------------------
    def run_once(
        self, now: datetime | None = None, *, campaign: str | None = None
    ) -> DispatchStats:
        """Claim and send batches until nothing is due (or ``stop`` is set)."""
        total = DispatchStats()
        while not self.stop.is_set():
            stats = self.dispatch_batch(now or utcnow(), campaign=campaign)
            total.add(stats)
            if stats.claimed == 0:
                break
        return total

    def dispatch_batch(self, now: datetime, *, campaign: str | None = None) -> DispatchStats:
        cfg = self.config.dispatch
        claimed = claim(
            self.engine,
            self.owner,
            now,
            cfg.batch_size,
            cfg.lease,
            campaign=campaign,
            wall_now=utcnow(),
        )
        stats = DispatchStats(claimed=len(claimed))
        if not claimed:
            return stats
        with self.engine.connect() as conn:
            recipients = load_recipients(conn, self.config, [c.customer_id for c in claimed], now)
            supp = suppressions.load_for(conn, list(recipients.values()))
        campaigns = self.campaigns()
        futures = [
            self.pool.submit(self._send_one, c, recipients.get(c.customer_id), supp, campaigns, now)
            for c in claimed
        ]
        self._collect(futures, stats)
        return stats

    def _collect(self, futures: Sequence[Future[Outcome]], stats: DispatchStats) -> None:
        """Record outcomes as the sends complete, in chunks of ``RECORD_EVERY`` or
        every ``RECORD_SECONDS``: one transaction per chunk instead of one commit
        per message from eight contending worker threads."""
        not_done: set[Future[Outcome]] = set(futures)
        pending: list[Outcome] = []
        deadline = time.monotonic() + RECORD_SECONDS
        while not_done:
            timeout = max(0.0, deadline - time.monotonic())
            done, not_done = wait(not_done, timeout=timeout, return_when=FIRST_COMPLETED)
            pending.extend(f.result() for f in done)
            due = time.monotonic() >= deadline
            if pending and (due or len(pending) >= RECORD_EVERY or not not_done):
                self._record(pending)
                for outcome in pending:
                    stats.outcomes[outcome.status] += 1
                pending = []
            if due:
                deadline = time.monotonic() + RECORD_SECONDS

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        """Write a chunk of outcomes: suppressions first, then one executemany
        UPDATE per shape of values, all guarded by ``status = 'sending'``."""
        supp = [o.suppress for o in outcomes if o.suppress is not None]
        if supp:
            suppressions.add(self.engine, supp)
        at = utcnow()
        finished: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        released: list[dict[str, Any]] = []
        for o in outcomes:
            if o.status == "released":
                released.append(
                    {
                        "b_id": o.msg.id,
                        "b_status": "planned" if o.msg.attempts <= 1 else "retry",
                        "b_attempts": o.msg.attempts - 1,
                        "b_at": at,
                    }
                )
                continue
            params = {"b_id": o.msg.id, "b_status": o.status, "b_at": at}
            params.update({f"b_{k}": v for k, v in o.values.items()})
            finished.setdefault(tuple(sorted(o.values)), []).append(params)
        with self.engine.begin() as conn:
            for keys, rows in finished.items():
                stmt = (
                    update(M)
                    .where(M.c.id == bindparam("b_id"), M.c.status == "sending")
                    .values(
                        status=bindparam("b_status"),
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=bindparam("b_at"),
                        **{k: bindparam(f"b_{k}") for k in keys},
                    )
                )
                conn.execute(stmt, rows)
            if released:
                conn.execute(
                    update(M)
                    .where(
                        M.c.id == bindparam("b_id"),
                        M.c.status == "sending",
                        M.c.lease_owner == self.owner,
                    )
                    .values(
                        status=bindparam("b_status"),
                        attempts=bindparam("b_attempts"),
                        lease_owner=None,
                        lease_expires_at=None,
                        updated_at=bindparam("b_at"),
                    ),
                    released,
                )
        for o in outcomes:
            log.info(
                "message %s",
                o.status,
                extra={"event": f"message_{o.status}", "message_id": o.msg.id},
            )

    # -- one message -------------------------------------------------------------------
    def _send_one(
        self,
        msg: Claimed,
        recipient: Recipient | None,
        supp: Suppressions,
        campaigns: Mapping[str, Any],
        now: datetime,
    ) -> Outcome:
        try:
            return self._send_checked(msg, recipient, supp, campaigns, now)
        except Exception as exc:  # a bug for one message must not strand the batch
            log.exception(
                "dispatch crashed", extra={"event": "dispatch_error", "message_id": msg.id}
            )
            return Outcome(msg, "failed", {"error": f"internal error: {type(exc).__name__}"})

    def _send_checked(
        self,
        msg: Claimed,
        recipient: Recipient | None,
        supp: Suppressions,
        campaigns: Mapping[str, Any],
        now: datetime,
    ) -> Outcome:
        if self.stop.is_set():
            return Outcome(msg, "released")
        if recipient is None:
            return Outcome(msg, "cancelled", {"error": "customer no longer exists"})
        campaign = campaigns.get(msg.campaign)
        if campaign is None:
            return Outcome(msg, "cancelled", {"error": "campaign no longer exists or is invalid"})
        address, reason = reachability(recipient, msg.channel, self.config)
        if reason is None and address and supp.blocks(msg.channel, address, recipient.customer_id):
            reason = "suppressed"
        if reason is not None or not address:
            return Outcome(msg, "cancelled", {"error": f"at send time: {reason}"})
        try:
            outgoing = self._render(msg, campaign, recipient, address, now)
        except EngageError as exc:
            return Outcome(msg, "render_error", {"error": str(exc), "address": address})
        if not self.buckets[msg.channel].acquire(self.stop):
            return Outcome(msg, "released")
        channel = self.channels[msg.channel]
        try:
            result = channel.send(outgoing)
        except TransientSendError as exc:
            return self._transient(msg, exc)
        except PermanentSendError as exc:
            suppress = None
            if exc.suppress_reason:
                source = f"provider:{channel.provider}"
                reason = exc.suppress_reason
                suppress = (msg.channel, address, recipient.customer_id, reason, source)
            return Outcome(msg, "failed", {"error": _describe(exc), "address": address}, suppress)
        except SendError as exc:
            return Outcome(msg, "failed", {"error": _describe(exc), "address": address})
        return Outcome(
            msg,
            "sent",
            {
                "address": address,
                "provider": result.provider,
                "provider_id": result.provider_id,
                "sent_at": utcnow(),
            },
        )

    def _render(
        self, msg: Claimed, campaign: Any, recipient: Recipient, address: str, now: datetime
    ) -> Outgoing:
        if msg.channel == "email":
            email = self.renderer.render_email(
                msg.template, campaign, recipient, now, message_ref=str(msg.id)
            )
            return Outgoing(
                message_id=msg.id,
                channel="email",
                to=address,
                campaign=msg.campaign,
                subject=email.subject,
                html=email.html,
                text=email.text,
                headers=dict(email.headers),
            )
        sms = self.renderer.render_sms(msg.template, campaign, recipient, now)
        return Outgoing(
            message_id=msg.id, channel="sms", to=address, campaign=msg.campaign, text=sms.body
        )

    def _transient(self, msg: Claimed, exc: TransientSendError) -> Outcome:
        cfg = self.config.dispatch
        if msg.attempts >= cfg.max_attempts:
            error = f"gave up after {msg.attempts} attempts: {_describe(exc)}"
            return Outcome(msg, "failed", {"error": error})
        delay = backoff_delay(
            msg.attempts, cfg.backoff_base, cfg.backoff_max, exc.retry_after, self.rng
        )
        return Outcome(msg, "retry", {"error": _describe(exc), "next_attempt_at": utcnow() + delay})


def _describe(exc: SendError) -> str:
    code = f" [{exc.code}]" if exc.code else ""
    return f"{type(exc).__name__}{code}: {exc}"


__all__ = [
    "Dispatcher",
    "DispatchStats",
    "Outcome",
    "TokenBucket",
    "backoff_delay",
    "claim",
    "expire_leases",
    "requeue",
]
