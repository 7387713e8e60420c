"""SendGrid Event Webhook batches -> message states, suppressions, consent,
interactions (SPEC §8, docs/http.md).

=====================  ====================================================
SendGrid event         engage
=====================  ====================================================
processed              an ``unknown`` message (the send timed out) is ``sent``
delivered              message ``delivered`` (from ``sent``/``unknown``)
bounce                 message ``bounced``; suppress ``invalid_address``
bounce, type blocked   recorded only (a soft, temporary refusal)
dropped                message ``failed``; a drop because SendGrid already
                       suppresses the address mirrors that suppression
spamreport             suppress ``spam_report``; clear ``email_opt_in``
(group_)unsubscribe    suppress ``unsubscribe``; clear ``email_opt_in``
open, click            ``email_open`` / ``email_click`` interaction
anything else          recorded as seen (``deferred``, ``group_resubscribe``, ...)
=====================  ====================================================

Events are matched to outbox rows by ``engage_message_id``, the custom
argument dispatch gives every email. Moves go through
``engage.db.states.move``, whose guarded UPDATE never moves a state
backwards; within one batch the state events of a message are applied in
lifecycle order (delivered, then bounce, then dropped), whatever order
SendGrid sent them in.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, select

from ...db.bulk import in_values
from ...db.models import Message
from ...db.states import State, move
from ...planning import suppressions
from ...planning.suppressions import NewSuppression
from .ledger import (
    APPLIED,
    DEFERRED,
    DUPLICATE,
    IGNORED,
    STALE,
    UNKNOWN,
    Outcomes,
    add_interactions,
    claim,
    release,
    set_consent,
)

PROVIDER = "sendgrid"
M = cast(Table, Message.__table__)

# state event -> (target, states it may come from), in the order they apply
_MOVES: dict[str, tuple[State, tuple[State, ...]]] = {
    # SendGrid accepted it: settles a send whose outcome was lost (``unknown``)
    "processed": (State.SENT, (State.UNKNOWN,)),
    "delivered": (State.DELIVERED, (State.SENT, State.UNKNOWN)),
    "bounce": (State.BOUNCED, (State.SENT, State.UNKNOWN, State.DELIVERED)),
    "dropped": (State.FAILED, (State.SENT, State.UNKNOWN)),
}
_CONSENT = {
    "spamreport": "spam_report",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}
_INTERACTIONS = {"open": "email_open", "click": "email_click"}
HANDLED = frozenset({*_MOVES, *_CONSENT, *_INTERACTIONS})
# SendGrid drops mail to addresses on its own suppression lists: mirror them.
_DROP_REASONS = {
    "bounced address": "invalid_address",
    "invalid": "invalid_address",
    "unsubscribed address": "unsubscribe",
    "spam reporting address": "spam_report",
}
_TEXT = 300  # characters of a provider's reason kept in message.error
_ERROR_STATES = (State.BOUNCED, State.FAILED)


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """One SendGrid event, reduced to what engage reads (the address and the
    details only for the kinds that use them)."""

    event_id: str
    kind: str
    message_id: int | None
    timestamp: float | None  # SendGrid's Unix time
    email: str | None = None  # for suppressions
    bounce_type: str | None = None  # "bounce" (hard) or "blocked" (soft)
    reason: str | None = None  # bounce / drop reason
    status: str | None = None  # bounce SMTP status, e.g. 5.1.1
    url: str | None = None  # click

    def occurred_at(self, now: datetime) -> datetime:
        if self.timestamp is not None:
            try:
                return datetime.fromtimestamp(self.timestamp, UTC)
            except (OverflowError, OSError, ValueError):
                pass
        return now


_ADDRESSED = frozenset({"bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe"})
_DETAILED = frozenset({"bounce", "dropped"})


def _text(value: Any, limit: int) -> str | None:
    if type(value) is not str:
        if value is None or isinstance(value, dict | list):
            return None
        value = str(value)
    text = value.strip()
    return text[:limit] or None


def _message_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2**63 else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value) or None
    return None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def parse_sendgrid(data: Any) -> tuple[list[EmailEvent], int]:
    """A decoded webhook body -> (events, number of malformed items).

    ``data`` must be a list (the caller checks); an item that is not an object
    or has no ``event`` is malformed. An event without ``sg_event_id`` (which
    SendGrid always sends) is identified by a hash of its content, so a
    redelivery is still recognised."""
    events: list[EmailEvent] = []
    bad = 0
    for item in data:
        if not isinstance(item, dict):
            bad += 1
            continue
        kind = item.get("event")
        if type(kind) is not str:
            bad += 1
            continue
        kind = kind[:32]
        event_id = _text(item.get("sg_event_id"), 128)
        if event_id is None:
            canonical = json.dumps(item, sort_keys=True, default=str).encode()
            event_id = "sha256:" + hashlib.sha256(canonical).hexdigest()[:64]
        event = EmailEvent(
            event_id,
            kind,
            _message_id(item.get("engage_message_id")),
            _timestamp(item.get("timestamp")),
        )
        if kind in _ADDRESSED or kind == "click":
            event = EmailEvent(
                event_id,
                kind,
                event.message_id,
                event.timestamp,
                email=_text(item.get("email"), 320),
                bounce_type=_text(item.get("type"), 32) if kind in _DETAILED else None,
                reason=_text(item.get("reason"), _TEXT) if kind in _DETAILED else None,
                status=_text(item.get("status"), 32) if kind in _DETAILED else None,
                url=_text(item.get("url"), 2000) if kind == "click" else None,
            )
        events.append(event)
    return events, bad


@dataclass(frozen=True, slots=True)
class _Msg:
    id: int
    status: str
    channel: str
    customer_id: str
    campaign: str
    address: str | None


def _messages(conn: Connection, ids: Iterable[int]) -> dict[int, _Msg]:
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    q = select(M.c.id, M.c.status, M.c.channel, M.c.customer_id, M.c.campaign, M.c.address).where(
        in_values(M.c.id, wanted)
    )
    return {row[0]: _Msg(*row) for row in conn.execute(q).all() if row[2] == "email"}


def _error(event: EmailEvent) -> str:
    if event.kind == "bounce":
        detail = " ".join(x for x in (event.status, event.reason) if x)
        return f"bounced (SendGrid): {detail}"[:_TEXT] if detail else "bounced (SendGrid)"
    return f"dropped by SendGrid: {event.reason}"[:_TEXT] if event.reason else "dropped by SendGrid"


@dataclass
class Applied:
    """What a batch did: the count per (event kind, outcome), and the events
    left for later (their message is still ``sending``), not recorded as seen."""

    outcomes: Outcomes
    deferred: list[EmailEvent]


def apply_sendgrid(conn: Connection, events: Sequence[EmailEvent], now: datetime) -> Applied:
    """Apply one verified batch inside the caller's transaction."""
    outcomes: Outcomes = Outcomes()
    new = claim(conn, PROVIDER, ((e.event_id, e.kind) for e in events), now)
    fresh: list[EmailEvent] = []
    for e in events:
        if e.event_id in new:
            new.discard(e.event_id)  # a repeat inside the batch is a duplicate
            fresh.append(e)
        else:
            outcomes[e.kind, DUPLICATE] += 1
    msgs = _messages(conn, (e.message_id for e in fresh if e.message_id is not None))

    deferred: list[EmailEvent] = []
    state_events: list[tuple[EmailEvent, _Msg]] = []
    supp: list[NewSuppression] = []
    opt_out: set[str] = set()
    interactions: list[dict[str, Any]] = []
    for e in fresh:
        m = msgs.get(e.message_id) if e.message_id is not None else None
        if m is None:
            outcomes[e.kind, UNKNOWN] += 1
        elif e.kind not in HANDLED or (e.kind == "bounce" and e.bounce_type == "blocked"):
            outcomes[e.kind, IGNORED] += 1
        elif e.kind in _MOVES and m.status == State.SENDING:
            if e.kind == "processed":  # it only settles unknown sends: nothing to wait for
                outcomes[e.kind, IGNORED] += 1
            else:  # its state change waits until the send is recorded
                outcomes[e.kind, DEFERRED] += 1
                deferred.append(e)
        elif e.kind in _MOVES:
            state_events.append((e, m))
            reason = "invalid_address" if e.kind == "bounce" else _drop_reason(e)
            if reason is not None:
                supp.append(_suppression(e, m, reason))
        elif e.kind in _CONSENT:
            supp.append(_suppression(e, m, _CONSENT[e.kind]))
            opt_out.add(m.customer_id)
            outcomes[e.kind, APPLIED] += 1
        else:
            interactions.append(_interaction(e, m, now))
            outcomes[e.kind, APPLIED] += 1

    release(conn, PROVIDER, [e.event_id for e in deferred])
    _move_states(conn, state_events, outcomes)
    # The SendGrid's address, not today's customer.email: the one that bounced.
    suppressions.insert(conn, [s for s in supp if s.address], now)
    set_consent(conn, "email", opt_out, False, now)
    add_interactions(conn, interactions, now)
    return Applied(outcomes, deferred)


def _drop_reason(e: EmailEvent) -> str | None:
    if e.kind != "dropped" or not e.reason:
        return None
    return _DROP_REASONS.get(e.reason.strip().lower())


def _suppression(e: EmailEvent, m: _Msg, reason: str) -> NewSuppression:
    return NewSuppression(
        channel="email",
        address=e.email or m.address or "",
        customer_id=m.customer_id,
        reason=reason,
        source=f"sendgrid {e.kind}",
        campaign=m.campaign,
        message_id=m.id,
    )


def _interaction(e: EmailEvent, m: _Msg, now: datetime) -> dict[str, Any]:
    attributes: dict[str, Any] = {"campaign": m.campaign, "message_id": m.id}
    if e.url:
        attributes["url"] = e.url
    return {
        "customer_id": m.customer_id,
        "kind": _INTERACTIONS[e.kind],
        "occurred_at": e.occurred_at(now),
        "attributes": attributes,
        "external_id": f"sendgrid:{e.event_id}",
    }


def _move_states(
    conn: Connection, state_events: list[tuple[EmailEvent, _Msg]], outcomes: Outcomes
) -> None:
    """Walk each message's state events in lifecycle order over its current
    status, then issue one guarded move per (target, error text) for the
    state each message ends in. (That final state's sources always include
    the stored status: the lifecycle order only ever moves forward.)"""
    status = {m.id: State(m.status) for _, m in state_events}
    final: dict[int, tuple[State, str]] = {}
    rank = {kind: i for i, kind in enumerate(_MOVES)}
    for e, m in sorted(state_events, key=lambda p: (rank[p[0].kind], p[0].timestamp or 0.0)):
        target, sources = _MOVES[e.kind]
        if status[m.id] in sources:
            status[m.id] = target
            final[m.id] = (target, _error(e) if target in _ERROR_STATES else "")
            outcomes[e.kind, APPLIED] += 1
        elif e.kind == "processed":  # the usual case: the message is already sent
            outcomes[e.kind, IGNORED] += 1
        else:  # past it; a bounce (or a mirrored drop) still added its suppression
            side_effect = e.kind == "bounce" or _drop_reason(e) is not None
            outcomes[e.kind, APPLIED if side_effect else STALE] += 1
    groups: dict[tuple[State, str], list[int]] = defaultdict(list)
    for mid, key in final.items():
        groups[key].append(mid)
    for (target, error), ids in groups.items():
        froms = sorted({s for t, srcs in _MOVES.values() if t == target for s in srcs})
        values = {"error": error} if error else None
        move(conn, sorted(ids), from_=froms, to=target, values=values, event="webhook_move")
