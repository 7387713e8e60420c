"""Send what is due, at most once, with enough requests in flight to hide the
providers' latency.

One plain loop per process (``Dispatcher.run_once``), every state change
through ``engage.db.states``:

1. **claim** a batch: due messages become ``claimed`` under this claim's token
   and a lease. Nothing is ambiguous yet: if the process dies now, the lease
   runs out and the messages go back to the queue untouched.
2. **prepare** it (``prepare.py``): current data, consent and suppressions,
   the send window *now*, expiry, rendering.
3. **start** as many as there are free request slots (``dispatch.workers``)
   and rate-limit tokens: they become ``sending`` in one guarded UPDATE, and
   only then go to the send pool. A crash leaves at most those ``unknown``.
4. **record** outcomes as they come back, in bulk, guarded by the claim token:
   an outcome of a claim that expired (and was re-queued and claimed again)
   changes nothing.

The pool's threads only call the providers (the SDKs are synchronous); with
a hundred or more requests in flight, a provider answering in 100–300 ms
costs throughput nothing. Failures: transient ones (known not to have reached
the provider) retry with exponential backoff and jitter, honouring
``Retry-After``, up to ``max_attempts``; a timeout or a dropped connection
after the request was written makes the message ``unknown``; permanent ones
fail; refused credentials stop that channel for the run and give its
messages back untouched.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine

from ..config import Config
from ..db import states
from ..db.states import ClaimedRow, State
from ..errors import (
    AmbiguousSendError,
    PermanentSendError,
    ProviderAuthError,
    SendError,
    TransientSendError,
)
from ..planning import suppressions
from ..templating.renderer import Renderer
from ..timeutil import utcnow
from .channels.base import Channel
from .prepare import Outcome, Ready, outcome, prepare

log = logging.getLogger(__name__)

# Outcomes are written in chunks: this many, or after this long.
RECORD_EVERY = 50
RECORD_SECONDS = 0.1
# A rate limiter lets this much of a second's worth of sends go at once.
BURST_SECONDS = 0.1


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
    """At most ``rate`` sends per second on average, ``rate × BURST_SECONDS``
    (at least one) at once. Used by the dispatch loop's thread only."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1.0, rate * BURST_SECONDS)
        self._tokens = self.burst
        self._clock = clock
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self, want: int) -> int:
        """Up to ``want`` tokens, those available now."""
        self._refill()
        got = min(want, int(self._tokens))
        self._tokens -= got
        return got

    def wait(self) -> float:
        """Seconds until the next token."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)


@dataclass
class DispatchStats:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    refused: dict[str, str] = field(default_factory=dict)  # channel -> why it stopped

    def add(self, other: DispatchStats) -> None:
        self.claimed += other.claimed
        self.outcomes.update(other.outcomes)
        self.refused.update(other.refused)


class _SendPool:
    """Threads that call the providers, started as they are needed (at most
    ``size``): each takes (message, outcomes queue) pairs from one queue."""

    def __init__(
        self, size: int, send: Callable[[Ready, queue.SimpleQueue[Outcome]], None]
    ) -> None:
        self._size, self._send = size, send
        self._work: queue.SimpleQueue[tuple[Ready, queue.SimpleQueue[Outcome]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []

    def put(self, item: Ready, done: queue.SimpleQueue[Outcome], busy: int) -> None:
        """Hand ``item`` to a thread; ``busy``: items handed out before it and not
        finished (a thread is started when every one is taken)."""
        if busy >= len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._loop, name=f"engage-send-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._work.put((item, done))

    def _loop(self) -> None:
        while (work := self._work.get()) is not None:
            self._send(*work)

    def close(self) -> None:
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []


class Dispatcher:
    """Sends due messages through the configured channels (see the module doc)."""

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
        clock: Callable[[], datetime] = utcnow,
    ):
        self.engine = engine
        self.config = config
        self.channels = channels
        self.renderer = renderer
        self.campaigns = campaigns
        self.owner = owner or default_owner()
        self.stop = stop or threading.Event()
        self.rng = rng or random.Random()
        self.clock = clock  # the moment of sending: windows, expiry, backoff, sent_at
        self._pool = _SendPool(config.dispatch.workers, self._send_to)
        self._buckets = {kind: TokenBucket(self._rate(kind)) for kind in channels}

    def _rate(self, kind: str) -> float:
        d = self.config.channels
        if kind == "email" and d.email == "sendgrid":
            return d.sendgrid.rate_per_second
        if kind == "sms" and d.sms == "twilio":
            return d.twilio.rate_per_second
        return 1e9  # file, console: no provider to protect

    def close(self) -> None:
        self._pool.close()

    # -- the loop ----------------------------------------------------------------------------
    def run_once(
        self,
        due_by: datetime | None = None,
        *,
        campaign: str | None = None,
        tally: Counter[str] | None = None,
    ) -> DispatchStats:
        """Claim and send until nothing is due (or ``stop`` is set).

        ``due_by`` decides what is due (an ``--at`` moment; default: now, on the
        database's clock); ``campaign`` limits the run to one campaign;
        ``tally`` is updated as outcomes are recorded.
        """
        cfg = self.config.dispatch
        stats = DispatchStats()
        ready: dict[str, deque[Ready]] = {kind: deque() for kind in self.channels}
        done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()  # from the send pool
        finished: list[Outcome] = []  # not yet recorded
        first_at = 0.0  # when the oldest of them arrived
        in_flight = 0
        # Start requests a few at a time (one UPDATE each), not one by one.
        start_chunk = max(1, cfg.workers // 8)
        claims: set[str] = set()  # this run's claim tokens: their leases are renewed
        renewed = time.monotonic()
        exhausted = False
        try:
            while True:
                stopping = self.stop.is_set()
                if stopping:
                    finished += self._release(ready)
                waiting = sum(map(len, ready.values()))
                if not (exhausted or stopping) and waiting < max(
                    cfg.workers - in_flight, cfg.batch_size // 2
                ):
                    got = self._claim(due_by, campaign, stats.refused, finished, ready, claims)
                    stats.claimed += got
                    exhausted = got == 0
                    continue
                if time.monotonic() - renewed > cfg.lease.total_seconds() / 3:
                    # Alive: keep what this run holds (only a dead worker's leases run out).
                    with self.engine.begin() as conn:
                        states.renew(conn, sorted(claims), lease=cfg.lease)
                    renewed = time.monotonic()
                room = cfg.workers - in_flight
                started, limited = 0, None
                if room >= min(start_chunk, waiting) or not in_flight:

                    def record(conn: Connection, now: list[Outcome] = finished) -> None:
                        self._record(now, stats, tally, conn)
                        now.clear()

                    started, limited = self._start_ready(ready, room, done, record)
                    in_flight += started
                if not finished:
                    first_at = time.monotonic()
                # Nothing started: wait for a send to finish, or for a rate limit.
                pause = 0.0 if started else min(limited or RECORD_SECONDS, RECORD_SECONDS)
                seen = len(finished)
                got = self._drain(done, finished, pause if in_flight else 0)
                in_flight -= got
                if limited is not None and not (started or in_flight or got):
                    time.sleep(pause)  # rate-limited, nothing in flight
                halted = self._halt_refused(finished[seen:], stats.refused, ready, finished)
                idle = not in_flight and not any(ready.values())
                if finished and (
                    halted
                    or idle
                    or len(finished) >= RECORD_EVERY
                    or time.monotonic() - first_at >= RECORD_SECONDS
                ):
                    self._record(finished, stats, tally)
                    finished = []
                if idle and (exhausted or stopping):
                    break
        finally:
            # A failed claim, prepare or record must not strand what is in flight.
            while in_flight > 0 and (got := self._drain(done, finished, 60.0)):
                in_flight -= got
            finished += self._release(ready)
            if finished:
                self._record(finished, stats, tally)
        return stats

    def _claim(
        self,
        due_by: datetime | None,
        campaign: str | None,
        refused: Mapping[str, str],
        finished: list[Outcome],
        ready: dict[str, deque[Ready]],
        claims: set[str],
    ) -> int:
        """Claim a batch and prepare it: outcomes decided here go to ``finished``,
        messages to send to ``ready``, its token to ``claims``. Returns how many
        were claimed."""
        kinds = [k for k in self.channels if k not in refused]
        if not kinds:
            return 0
        cfg = self.config.dispatch
        # No more than the rate limits let go within half a lease: the rest
        # would only wait (and lose its claim) while other workers could send it.
        slowest = min(self._buckets[k].rate for k in kinds)
        limit = max(1, min(cfg.batch_size, int(slowest * cfg.lease.total_seconds() / 2)))
        token = secrets.token_hex(8)
        with self.engine.begin() as conn:
            batch = states.claim(
                conn,
                token=token,
                owner=self.owner,
                limit=limit,
                lease=cfg.lease,
                due_by=due_by,
                campaign=campaign,
                channels=kinds,
            )
        if not batch:
            return 0
        claims.add(token)
        try:
            items = prepare(
                self.engine,
                self.config,
                self.renderer,
                batch,
                self.campaigns(),
                self.clock(),
                due_by,
            )
        except Exception:
            finished += [Outcome(m, states.waiting(m.attempts), "released") for m in batch]
            raise
        for item in items:
            if isinstance(item, Ready):
                ready[item.msg.channel].append(item)
            else:
                finished.append(item)
        return len(batch)

    def _start_ready(
        self,
        ready: dict[str, deque[Ready]],
        room: int,
        done: queue.SimpleQueue[Outcome],
        record: Callable[[Connection], None],
    ) -> tuple[int, float | None]:
        """Start what the free request slots (``room``) and the rate limits allow
        (``record`` writes finished outcomes in the same transaction). Returns
        how many started, and, when a rate limit held some back, the seconds
        until it lets one more go."""
        batch: list[Ready] = []
        limited: float | None = None
        for kind, pending in ready.items():
            n = self._buckets[kind].take(min(len(pending), room - len(batch)))
            batch += [pending.popleft() for _ in range(n)]
            if pending and len(batch) < room:
                wait = self._buckets[kind].wait()
                limited = wait if limited is None else min(limited, wait)
        busy = self.config.dispatch.workers - room
        return self._start(batch, done, busy, record), limited

    def _start(
        self,
        batch: Sequence[Ready],
        done: queue.SimpleQueue[Outcome],
        busy: int,
        record: Callable[[Connection], None],
    ) -> int:
        """``claimed`` → ``sending`` (per claim token), then hand each one that
        moved to the pool. One that did not move lost its claim: not ours to send.
        Finished outcomes are written in the same transaction: a crash then
        leaves few sent-but-unrecorded messages to become ``unknown``."""
        if not batch:
            return 0
        by_claim: dict[str, list[Ready]] = {}
        for item in batch:
            by_claim.setdefault(item.msg.claim, []).append(item)
        lease = self.config.dispatch.lease
        with self.engine.begin() as conn:
            record(conn)
            moved = {
                token: set(states.start(conn, [i.msg.id for i in items], claim=token, lease=lease))
                for token, items in by_claim.items()
            }
        started = 0
        for token, items in by_claim.items():
            for item in items:
                if item.msg.id in moved[token]:
                    self._pool.put(item, done, busy + started)
                    started += 1
        return started

    @staticmethod
    def _drain(done: queue.SimpleQueue[Outcome], into: list[Outcome], block: float) -> int:
        """Move finished sends into ``into``, waiting up to ``block`` s for the first."""
        got = 0
        try:
            item = done.get(timeout=block) if block > 0 else done.get_nowait()
            while True:
                into.append(item)
                got += 1
                item = done.get_nowait()
        except queue.Empty:
            return got

    def _halt_refused(
        self,
        new_outcomes: Sequence[Outcome],
        refused: dict[str, str],
        ready: dict[str, deque[Ready]],
        finished: list[Outcome],
    ) -> bool:
        """A channel whose provider refused our credentials stops for this run
        (``DispatchStats.refused`` says why; the caller reports it): its
        prepared messages go back to the queue (into ``finished``) untouched."""
        new = False
        for o in new_outcomes:
            kind = o.msg.channel
            if o.label == "refused" and kind not in refused:
                refused[kind] = o.reason or "credentials refused"
                new = True
        for kind in refused:
            if ready.get(kind):
                finished += self._release({kind: ready[kind]})
        return new

    @staticmethod
    def _release(ready: Mapping[str, deque[Ready]]) -> list[Outcome]:
        """Prepared messages given back untouched (stopping, or credentials refused)."""
        out = []
        for pending in ready.values():
            while pending:
                msg = pending.popleft().msg
                out.append(Outcome(msg, states.waiting(msg.attempts), "released"))
        return out

    # -- recording -----------------------------------------------------------------------
    def _record(
        self,
        outcomes: Sequence[Outcome],
        stats: DispatchStats,
        tally: Counter[str] | None,
        conn: Connection | None = None,
    ) -> None:
        """Suppressions first, then one guarded move per (from, to, columns),
        in ``conn``'s transaction when given (the next start's)."""
        if not outcomes:
            return
        supp = [o.suppress for o in outcomes if o.suppress is not None]
        if supp:
            suppressions.add(self.engine, supp)
        groups: dict[tuple[State, State, tuple[str, ...]], list[dict[str, Any]]] = {}
        for o in outcomes:
            source = State.SENDING if o.started else State.CLAIMED
            row = {"id": o.msg.id, "claim": o.msg.claim, **o.values}
            groups.setdefault((source, o.state, tuple(sorted(row))), []).append(row)
        with nullcontext(conn) if conn is not None else self.engine.begin() as c:
            for (source, target, _), rows in groups.items():
                states.move_each(c, rows, from_=[source], to=target, event="message_record")
        for o in outcomes:
            stats.outcomes[o.label] += 1
            if tally is not None:
                tally[o.label] += 1
            _log(o)

    # -- one message (on a pool thread) --------------------------------------------------
    def _send_to(self, ready: Ready, done: queue.SimpleQueue[Outcome]) -> None:
        try:
            result = self._send(ready)
        except BaseException as exc:  # never lose an outcome: the row would stay sending
            error = f"internal error while sending: {type(exc).__name__}"
            result = outcome(ready.msg, State.UNKNOWN, error)
            log.exception(error, extra={"event": "dispatch_error", "message_id": ready.msg.id})
        done.put(replace(result, started=True))

    def _send(self, ready: Ready) -> Outcome:
        msg, outgoing = ready.msg, ready.outgoing
        channel = self.channels[msg.channel]
        try:
            result = channel.send(outgoing)
        except TransientSendError as exc:
            return self._transient(msg, exc)
        except AmbiguousSendError as exc:
            return outcome(msg, State.UNKNOWN, _describe(exc), address=outgoing.to)
        except ProviderAuthError as exc:  # not sent: back to the queue as it was
            back = states.waiting(msg.attempts)
            return Outcome(msg, back, "refused", {"attempts": msg.attempts}, reason=str(exc))
        except PermanentSendError as exc:
            suppress = None
            if exc.suppress_reason:
                source = f"provider:{channel.provider}"
                suppress = (msg.channel, outgoing.to, msg.customer_id, exc.suppress_reason, source)
            error = _describe(exc)
            failed = {"error": error, "address": outgoing.to}
            return Outcome(msg, State.FAILED, "failed", failed, error, suppress)
        except SendError as exc:
            return outcome(msg, State.FAILED, _describe(exc), address=outgoing.to)
        values: dict[str, Any] = {
            "error": None,  # an earlier attempt's error is history now
            "address": outgoing.to,
            "provider": result.provider,
            "provider_id": result.provider_id,
            "sent_at": self.clock(),
        }
        return Outcome(msg, State.SENT, "sent", values)

    def _transient(self, msg: ClaimedRow, exc: TransientSendError) -> Outcome:
        cfg = self.config.dispatch
        attempt = msg.attempts + 1  # this one
        if attempt >= cfg.max_attempts:
            return outcome(msg, State.FAILED, f"gave up after {attempt} attempts: {_describe(exc)}")
        delay = backoff_delay(attempt, cfg.backoff_base, cfg.backoff_max, exc.retry_after, self.rng)
        return outcome(msg, State.RETRY, _describe(exc), next_attempt_at=self.clock() + delay)


def expire_leases(engine: Engine, now: datetime | None = None) -> states.Expired:
    """See ``engage.db.states.expire_leases`` (default: the database's clock)."""
    with engine.begin() as conn:
        return states.expire_leases(conn, now)


def _describe(exc: SendError) -> str:
    code = f" [{exc.code}]" if exc.code else ""
    return f"{type(exc).__name__}{code}: {exc}"


def _log(o: Outcome) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    extra: dict[str, Any] = {
        "event": f"message_{o.label}",
        "message_id": o.msg.id,
        "campaign": o.msg.campaign,
        "channel": o.msg.channel,
    }
    if o.reason:
        extra["reason"] = o.reason
    if "send_after" in o.values:
        extra["send_after"] = o.values["send_after"]
    log.info("message %s", o.label, extra=extra)


__all__ = [
    "Dispatcher",
    "DispatchStats",
    "Outcome",
    "TokenBucket",
    "backoff_delay",
    "default_owner",
    "expire_leases",
]
