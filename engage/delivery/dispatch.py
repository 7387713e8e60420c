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
import queue
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, and_, or_, select, update

from ..config import Config
from ..db.bulk import update_rows
from ..db.models import Message
from ..errors import PermanentSendError, SendError, TransientSendError
from ..planning import suppressions
from ..templating.renderer import Renderer
from ..timeutil import utcnow
from .channels.base import Channel
from .prepare import Claimed, Helper, Outcome, Ready, helper_url, prepare

log = logging.getLogger(__name__)
M = cast(Table, Message.__table__)

DUE_STATES = ("planned", "retry")
REQUEUE_STATES = ("unknown", "failed", "render_error", "cancelled")

# Outcomes are written by the batch thread in chunks: at most this many, or
# after this long, so few sent-but-unrecorded rows exist at any moment (a crash
# leaves them ``sending`` -> ``unknown``: correct, but noisy).
RECORD_EVERY = 50
RECORD_SECONDS = 0.5
# The helper process (see prepare.py) starts at the first claim of this many.
HELPER_MIN_BATCH = 50


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
        # The picked rows are locked, so they are still due: the UPDATE finds
        # them by primary key only. (With ``due`` repeated there, PostgreSQL
        # estimated one due row from fresh statistics and drove the UPDATE by
        # the status index, re-scanning the CTE per due row: 60 ms to claim
        # 100 of 5,000.)
        picked = pick.with_for_update(skip_locked=True).cte("picked")
        target = M.c.id == picked.c.id
    else:  # one statement inside the single write transaction
        picked = pick.cte("picked")
        target = and_(M.c.id == picked.c.id, due)
    # A CTE runs once. (As ``id IN (subquery)`` PostgreSQL may re-run the
    # SKIP LOCKED subquery, which then skips the rows just updated and claims
    # far more than ``limit``.)
    expires = wall_now + lease
    stmt = (
        update(M)
        .where(target)
        .values(
            status="sending",
            lease_owner=owner,
            lease_expires_at=expires,
            attempts=M.c.attempts + 1,
            updated_at=wall_now,
        )
        .returning(M.c.id, M.c.campaign, M.c.customer_id, M.c.channel, M.c.template, M.c.attempts)
    )
    with engine.begin() as conn:
        rows = conn.execute(stmt).all()
    # The lease's end is known here: no need to read it back per row.
    claimed = [Claimed(i, cmp, cust, ch, tpl, n, expires) for i, cmp, cust, ch, tpl, n in rows]
    return sorted(claimed, key=lambda c: c.id)


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


_LEASE_CLEARED = {"lease_owner": None, "lease_expires_at": None}


class _Inbox:
    """Where worker threads leave outcomes. The recorder sleeps until ``want`` of
    them are there (or a timeout), so it wakes once per chunk, not per message."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._items: list[Outcome] = []
        self._want = 1

    def put(self, outcome: Outcome) -> None:
        with self._cond:
            self._items.append(outcome)
            if len(self._items) >= self._want:
                self._cond.notify()

    def take(self, want: int, timeout: float) -> list[Outcome]:
        with self._cond:
            if len(self._items) < want:
                self._want = want
                self._cond.wait(timeout)
            items, self._items = self._items, []
            return items


class Dispatcher:
    """Sends due messages through the configured channels with a bounded pool."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        channels: Mapping[str, Channel],
        renderer: Renderer,
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
        # The send pool: ``workers`` threads taking (message, inbox) pairs; a
        # plain queue, since nobody waits on a single send's future.
        self._sends: queue.SimpleQueue[tuple[Ready, _Inbox] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._send_loop, name=f"engage-send-{n}", daemon=True)
            for n in range(config.dispatch.workers)
        ]
        for thread in self._threads:
            thread.start()
        self._helper: Helper | None = None
        self._helper_url = helper_url(engine) if config.dispatch.helper_process else None
        self._failure: BaseException | None = None  # a batch that could not be prepared
        self.helper_prepared = 0  # messages prepared by the helper process so far
        self._margin = config.dispatch.lease / 4  # of the lease left to start a send

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None
        # Only an aborted run_once leaves sends queued: give them back unsent.
        left: list[Outcome] = []
        while True:
            try:
                work = self._sends.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                left.append(Outcome(work[0].msg, "released"))
        if left:
            try:
                self._record(left)
            except Exception:  # their leases run out: unknown, never resent
                log.exception("cannot release unsent messages", extra={"event": "dispatch_error"})
        for _ in self._threads:
            self._sends.put(None)
        for thread in self._threads:
            thread.join()

    # -- sending -------------------------------------------------------------------------
    def run_once(
        self,
        now: datetime | None = None,
        *,
        campaign: str | None = None,
        tally: Counter[str] | None = None,
    ) -> DispatchStats:
        """Claim and send until nothing is due (or ``stop`` is set).

        A pipeline, not batch after batch: the next batch is claimed and its
        recipients loaded while the previous one is still being sent, so the
        worker pool never idles on the database, and outcomes are written in
        chunks as they arrive. Claims top the work in flight up to
        ``batch_size`` (once half of it is done), never beyond: a crash leaves
        at most one batch ``sending``. ``now`` (default: the wall clock at each claim)
        decides what is due; ``tally`` is updated as outcomes are recorded.
        """
        cfg = self.config.dispatch
        refill_at = min(max(cfg.batch_size // 2, cfg.workers), cfg.batch_size - 1)
        stats = DispatchStats()
        inbox = _Inbox()
        in_flight = 0
        exhausted = False
        try:
            while True:
                if self._failure is not None:
                    exhausted = True
                if not exhausted and in_flight <= refill_at and not self.stop.is_set():
                    limit = cfg.batch_size - in_flight
                    submitted = self._claim_and_submit(now or utcnow(), campaign, inbox, limit)
                    stats.claimed += submitted
                    in_flight += submitted
                    exhausted = submitted == 0
                    continue
                if in_flight == 0:
                    break
                # Sleep until a chunk is ready, the pool needs feeding, or time is up.
                feeding = not exhausted and not self.stop.is_set()
                wake = min(RECORD_EVERY, in_flight - refill_at if feeding else in_flight)
                done = inbox.take(max(wake, 1), RECORD_SECONDS)
                if done:
                    in_flight -= len(done)
                    self._record_into(done, stats, tally)
                    if any(o.status == "released" for o in done) and not self.stop.is_set():
                        exhausted = False  # given back (lease nearly over): due again
        finally:
            # A failed claim or record must not strand what is already in flight.
            while in_flight > 0:
                done = inbox.take(in_flight, RECORD_SECONDS)
                in_flight -= len(done)
                if done:
                    self._record_into(done, stats, tally)
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        return stats

    def _claim_and_submit(
        self, now: datetime, campaign: str | None, inbox: _Inbox, limit: int
    ) -> int:
        """Claim up to ``limit`` messages and get them prepared (here, or by the
        helper process while there is a backlog); each prepared message then goes
        to the send pool."""
        cfg = self.config.dispatch
        campaigns = self.campaigns()
        claimed = claim(
            self.engine,
            self.owner,
            now,
            limit,
            cfg.lease,
            campaign=campaign,
            wall_now=utcnow(),
        )
        if not claimed:
            return 0
        future = None
        try:
            helper = self._helper_for(len(claimed))
            if helper is not None:
                future = helper.submit(claimed, campaigns, now, self.renderer.snapshot)
        except Exception as exc:  # it cannot start, or broke between batches
            future = Future()
            future.set_exception(exc)
        if future is None:
            self._hand_out(claimed, campaigns, now, inbox, None)
        else:
            future.add_done_callback(
                lambda done: self._hand_out(claimed, campaigns, now, inbox, done)
            )
        return len(claimed)

    def _helper_for(self, batch: int) -> Helper | None:
        """The helper process once it is up. It is started at the first full
        batch (a backlog is worth a process; a handful of messages is not), and
        batches are prepared here until it has started."""
        cfg = self.config.dispatch
        url = self._helper_url  # once: the helper's callback thread may clear it
        if self._helper is None and url is not None:
            if batch >= max(cfg.batch_size, HELPER_MIN_BATCH):
                # If this raises, the batch is prepared here and _hand_out
                # clears _helper_url, so no second start is tried.
                self._helper = Helper(self.config, url)
                log.info(
                    "backlog: preparing batches in a helper process",
                    extra={"event": "dispatch_helper_started"},
                )
        helper = self._helper
        if helper is not None and (helper.failed or self._helper_url is None):
            log.warning("dispatch helper stopped", extra={"event": "dispatch_helper_failed"})
            helper.close()
            self._helper = helper = None
            self._helper_url = None  # prepare here from now on
        return helper if helper is not None and helper.ready else None

    def _hand_out(
        self,
        claimed: Sequence[Claimed],
        campaigns: Mapping[str, Any],
        now: datetime,
        inbox: _Inbox,
        done: Future[list[Ready | Outcome]] | None,
    ) -> None:
        """Outcomes decided by preparation go to the recorder, ready messages to
        the send pool. If the helper failed, prepare here instead; if that fails
        too, give the whole batch back and stop claiming."""
        try:
            if done is None or done.cancelled() or done.exception() is not None:
                if done is not None:
                    log.warning(
                        "dispatch helper failed; preparing in this process",
                        exc_info=None if done.cancelled() else done.exception(),
                        extra={"event": "dispatch_helper_failed"},
                    )
                    self._helper_url = None  # retire it, start no other
                items = prepare(self.engine, self.config, self.renderer, claimed, campaigns, now)
            else:
                items = done.result()
                self.helper_prepared += len(items)
        except Exception as exc:
            log.exception("cannot prepare a batch", extra={"event": "dispatch_error"})
            self._failure = self._failure or exc
            for msg in claimed:  # nothing was handed to a provider
                inbox.put(Outcome(msg, "released"))
            return
        for item in items:
            if isinstance(item, Ready):
                self._sends.put((item, inbox))
            else:
                inbox.put(item)

    def _send_loop(self) -> None:
        while (work := self._sends.get()) is not None:
            ready, inbox = work
            inbox.put(self._send_ready(ready))

    def _record_into(
        self, outcomes: Sequence[Outcome], stats: DispatchStats, tally: Counter[str] | None
    ) -> None:
        self._record(outcomes)
        for outcome in outcomes:
            stats.outcomes[outcome.status] += 1
            if tally is not None:
                tally[outcome.status] += 1

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        """Write a chunk of outcomes: suppressions first, then one UPDATE per
        shape of values, all guarded by our own ``sending`` lease (a row whose
        lease expired, now ``unknown``, and was re-queued and claimed by another
        worker is left alone)."""
        supp = [o.suppress for o in outcomes if o.suppress is not None]
        if supp:
            suppressions.add(self.engine, supp)
        at = utcnow()
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for o in outcomes:
            values = o.values
            if o.status == "released":  # never handed to a provider: undo the attempt
                status = "planned" if o.msg.attempts <= 1 else "retry"
                values = {"attempts": o.msg.attempts - 1}
            else:
                status = o.status
            row = {"id": o.msg.id, "status": status, "updated_at": at, **_LEASE_CLEARED}
            row.update(values)
            by_shape.setdefault(tuple(row), []).append(row)
        ours = [M.c.status == "sending", M.c.lease_owner == self.owner]
        with self.engine.begin() as conn:
            for rows in by_shape.values():
                update_rows(conn, M, rows, keys=["id"], where=ours)
        for o in outcomes:
            log.info(
                "message %s",
                o.status,
                extra={"event": f"message_{o.status}", "message_id": o.msg.id},
            )

    # -- one message -------------------------------------------------------------------
    def _send_ready(self, ready: Ready) -> Outcome:
        try:
            return self._send(ready)
        except Exception as exc:  # a bug for one message must not strand the batch
            log.exception(
                "dispatch crashed", extra={"event": "dispatch_error", "message_id": ready.msg.id}
            )
            return Outcome(ready.msg, "failed", {"error": f"internal error: {type(exc).__name__}"})

    def _send(self, ready: Ready) -> Outcome:
        msg, outgoing = ready.msg, ready.outgoing
        address = outgoing.to
        if self.stop.is_set() or not self.buckets[msg.channel].acquire(self.stop):
            return Outcome(msg, "released")
        if msg.lease_expires_at is not None and utcnow() > msg.lease_expires_at - self._margin:
            # Queued too long (rate limit, slow provider): its lease may run out
            # mid-send and the row turn ``unknown``, which an operator could
            # re-queue while this send goes on. Give it back instead.
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
                suppress = (msg.channel, address, msg.customer_id, reason, source)
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
    "Claimed",
    "Dispatcher",
    "DispatchStats",
    "Outcome",
    "TokenBucket",
    "backoff_delay",
    "claim",
    "expire_leases",
    "requeue",
]
