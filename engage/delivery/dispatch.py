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
from .prepare import Outcome, Ready, outcome, prepare, recheck

log = logging.getLogger(__name__)

# Outcomes are written in chunks: this many, or after this long.
RECORD_EVERY = 100
RECORD_SECONDS = 0.2
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
        self.pool = _SendPool(config.dispatch.workers, self._send_to)
        self.buckets = {kind: TokenBucket(self._rate(kind)) for kind in channels}

    def _rate(self, kind: str) -> float:
        d = self.config.channels
        if kind == "email" and d.email == "sendgrid":
            return d.sendgrid.rate_per_second
        if kind == "sms" and d.sms == "twilio":
            return d.twilio.rate_per_second
        return 1e9  # file, console: no provider to protect

    def close(self) -> None:
        self.pool.close()

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
        return _Run(self, due_by, campaign, tally).loop()

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


class _Run:
    """One ``run_once``: the messages prepared, in flight and finished, and
    the loop that moves them along (see the module doc)."""

    def __init__(
        self, d: Dispatcher, due_by: datetime | None, campaign: str | None, tally: Any
    ) -> None:
        self.d, self.due_by, self.campaign, self.tally = d, due_by, campaign, tally
        self.cfg = d.config.dispatch
        self.stats = DispatchStats()
        self.ready: dict[str, deque[Ready]] = {kind: deque() for kind in d.channels}
        self.done: queue.SimpleQueue[Outcome] = queue.SimpleQueue()  # from the send pool
        self.finished: list[Outcome] = []  # not yet recorded
        self.in_flight = 0
        self.claims: set[str] = set()  # this run's tokens: their leases are renewed

    def loop(self) -> DispatchStats:
        cfg = self.cfg
        start_chunk = max(1, cfg.workers // 4)  # a few starts per UPDATE, not one each
        first_at = renewed = time.monotonic()
        exhausted = False
        try:
            while True:
                stopping = self.d.stop.is_set()
                if stopping:
                    self.finished += self._release(self.ready)
                waiting = sum(map(len, self.ready.values()))
                room = cfg.workers - self.in_flight
                # 1-2. Keep a prepared batch ahead of the send pool.
                if not (exhausted or stopping) and waiting < max(room, cfg.batch_size // 2):
                    got = self._claim()
                    self.stats.claimed += got
                    exhausted = got == 0
                    continue
                if time.monotonic() - renewed > cfg.lease.total_seconds() / 3:
                    with self.d.engine.begin() as conn:  # alive: keep what this run holds
                        states.renew(conn, sorted(self.claims), lease=cfg.lease)
                    renewed = time.monotonic()
                # 3. Start what the free slots and the rate limits allow.
                started, limited = 0, None
                if room >= min(start_chunk, waiting) or not self.in_flight:
                    started, limited = self._start_ready(room)
                if not self.finished:
                    first_at = time.monotonic()
                # 4. Collect finished sends; nothing started: wait for one, or a token.
                pause = 0.0 if started else min(limited or RECORD_SECONDS, RECORD_SECONDS)
                seen = len(self.finished)
                # Enough free slots for a start chunk, when messages wait for one.
                want = max(1, min(start_chunk - room, self.in_flight)) if waiting else 1
                got = self._drain(pause if self.in_flight else 0, want)
                if limited is not None and not (started or self.in_flight or got):
                    time.sleep(pause)  # rate-limited, nothing in flight
                halted = self._halt_refused(self.finished[seen:])
                idle = not self.in_flight and not any(self.ready.values())
                if self.finished and (
                    halted
                    or idle
                    or len(self.finished) >= RECORD_EVERY
                    or time.monotonic() - first_at >= RECORD_SECONDS
                ):
                    self._record()
                if idle and (exhausted or stopping):
                    break
        finally:
            # A failed claim, prepare or record must not strand what is in flight.
            while self.in_flight > 0 and self._drain(60.0):
                pass
            self.finished += self._release(self.ready)
            self._record()
        return self.stats

    def _claim(self) -> int:
        """Claim a batch and prepare it: outcomes decided here go to ``finished``,
        messages to send to ``ready``. Returns how many were claimed."""
        d, cfg = self.d, self.cfg
        kinds = [k for k in d.channels if k not in self.stats.refused]
        if not kinds:
            return 0
        # No more than the rate limits let go within half a lease: the rest
        # would only wait while other workers could send it.
        slowest = min(d.buckets[k].rate for k in kinds)
        limit = max(1, min(cfg.batch_size, int(slowest * cfg.lease.total_seconds() / 2)))
        token = secrets.token_hex(8)
        with d.engine.begin() as conn:
            batch = states.claim(
                conn,
                token=token,
                owner=d.owner,
                limit=limit,
                lease=cfg.lease,
                due_by=self.due_by,
                campaign=self.campaign,
                channels=kinds,
            )
        if not batch:
            return 0
        self.claims.add(token)
        try:
            items = prepare(
                d.engine, d.config, d.renderer, batch, d.campaigns(), d.clock(), self.due_by
            )
        except Exception:
            self.finished += [Outcome(m, states.waiting(m.attempts), "released") for m in batch]
            raise
        for item in items:
            if isinstance(item, Ready):
                self.ready[item.msg.channel].append(item)
            else:
                self.finished.append(item)
        return len(batch)

    def _start_ready(self, room: int) -> tuple[int, float | None]:
        """Start what the free request slots (``room``) and the rate limits allow.
        Returns how many started, and, when a rate limit held some back, the
        seconds until it lets one more go."""
        batch: list[Ready] = []
        limited: float | None = None
        now = self.d.clock()
        for kind, pending in self.ready.items():
            bucket = self.d.buckets[kind]
            n = bucket.take(min(len(pending), room))
            for _ in range(n):
                item = pending.popleft()
                late = recheck(item, now)  # held back past its window or expiry?
                if late is None:
                    batch.append(item)
                else:
                    self.finished.append(late)
            room -= n
            if pending and room > 0:  # held back by the rate limit
                wait = bucket.wait()
                limited = wait if limited is None else min(limited, wait)
        return self._start(batch), limited

    def _start(self, batch: Sequence[Ready]) -> int:
        """``claimed`` → ``sending`` (per claim token), then hand each one that
        moved to the pool; one that did not move lost its claim: not ours to
        send. When a record's worth of outcomes has finished, they are written
        in the same transaction (one commit instead of two)."""
        if not batch:
            return 0
        by_claim: dict[str, list[Ready]] = {}
        for item in batch:
            by_claim.setdefault(item.msg.claim, []).append(item)
        with self.d.engine.begin() as conn:
            if len(self.finished) >= RECORD_EVERY:
                self._record(conn)
            moved = {
                token: states.start(
                    conn, [i.msg.id for i in items], claim=token, lease=self.cfg.lease
                )
                for token, items in by_claim.items()
            }
        started = 0
        for token, items in by_claim.items():
            ids = set(moved[token])
            for item in items:
                if item.msg.id in ids:
                    self.d.pool.put(item, self.done, self.in_flight + started)
                    started += 1
        self.in_flight += started
        return started

    def _drain(self, block: float, want: int = 1) -> int:
        """Move finished sends into ``finished``, waiting up to ``block`` s for
        the first ``want`` (the loop need not turn for each one)."""
        got = 0
        deadline = time.monotonic() + block
        try:
            item = self.done.get(timeout=block) if block > 0 else self.done.get_nowait()
            while True:
                self.finished.append(item)
                got += 1
                left = deadline - time.monotonic() if got < want else 0
                item = self.done.get(timeout=left) if left > 0 else self.done.get_nowait()
        except queue.Empty:
            self.in_flight -= got
            return got

    def _halt_refused(self, new: Sequence[Outcome]) -> bool:
        """A channel whose provider refused our credentials stops for this run
        (``DispatchStats.refused`` says why; the caller reports it): its
        prepared messages go back to the queue untouched."""
        refused = self.stats.refused
        halted = False
        for o in new:
            if o.label == "refused" and o.msg.channel not in refused:
                refused[o.msg.channel] = o.reason or "credentials refused"
                halted = True
        for kind in refused:
            if self.ready.get(kind):
                self.finished += self._release({kind: self.ready[kind]})
        return halted

    @staticmethod
    def _release(ready: Mapping[str, deque[Ready]]) -> list[Outcome]:
        """Prepared messages given back untouched (stopping, or credentials refused)."""
        out = []
        for pending in ready.values():
            while pending:
                msg = pending.popleft().msg
                out.append(Outcome(msg, states.waiting(msg.attempts), "released"))
        return out

    def _record(self, conn: Connection | None = None) -> None:
        """Write ``finished``: suppressions first, then one guarded move per
        (from, to, columns), in ``conn``'s transaction when given."""
        outcomes, self.finished = self.finished, []
        if not outcomes:
            return
        supp = [o.suppress for o in outcomes if o.suppress is not None]
        if supp:
            suppressions.add(self.d.engine, supp)
        groups: dict[tuple[State, State, tuple[str, ...]], list[dict[str, Any]]] = {}
        for o in outcomes:
            source = State.SENDING if o.started else State.CLAIMED
            row = {"id": o.msg.id, "claim": o.msg.claim, **o.values}
            groups.setdefault((source, o.state, tuple(sorted(row))), []).append(row)
        with nullcontext(conn) if conn is not None else self.d.engine.begin() as c:
            for (source, target, _), rows in groups.items():
                states.move_each(c, rows, from_=[source], to=target, event="message_record")
        for o in outcomes:
            self.stats.outcomes[o.label] += 1
            if self.tally is not None:
                self.tally[o.label] += 1
            _log(o)


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
