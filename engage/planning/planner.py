"""One campaign occurrence -> decisions -> outbox rows, in bulk and idempotently.

``evaluate`` streams the audience and applies the policy rules with facts
loaded per batch (suppressions, this campaign's history, frequency-cap use);
``dry_run`` reports it without writing; ``plan_occurrence`` writes
``message`` rows (``planned`` or ``held_out``) with a unique dedupe key and
records the occurrence in ``campaign_run``. Planning the same occurrence
twice, from one process or several, inserts nothing new.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    case,
    false,
    func,
    or_,
    select,
    update,
)

from ..campaigns.audience import stream_audience
from ..config import Config
from ..customers.recipients import Recipient
from ..db import states
from ..db.bulk import all_rows, in_values, insert_ignore, no_index
from ..db.models import CampaignRun, Message
from ..db.session import shared_across_threads
from ..timeutil import ensure_utc, utcnow
from . import suppressions
from .lock import planning_lock
from .pipeline import Lane, WriteBehind
from .policy import (
    CampaignRules,
    Decision,
    History,
    Suppressions,
    decide,
)

log = logging.getLogger(__name__)

M = cast(Table, Message.__table__)
R = cast(Table, CampaignRun.__table__)
DEFAULT_EXPIRES_AFTER = timedelta(hours=24)  # campaign-like objects without expires_after


def dedupe_key(campaign: str, scheduled_at: datetime, customer_id: str) -> str:
    """One message per (campaign, occurrence, customer), whoever plans it."""
    return f"{campaign}|{ensure_utc(scheduled_at):%Y%m%dT%H%M%SZ}|{customer_id}"


@dataclass
class Evaluated:
    recipient: Recipient
    decision: Decision


def load_history(
    conn: Connection,
    batch: Sequence[Recipient],
    rules: CampaignRules,
    config: Config,
    as_of: datetime,
    run_id: int | None,
) -> dict[str, History]:
    """Last send of this campaign and frequency-cap use, per customer, in one query.

    One pass over each customer's messages (the (customer_id, planned_at)
    index) computes both facts. Rows of the occurrence being planned
    (``run_id``) are ignored, so that re-planning an interrupted occurrence
    reaches the same decisions. A dry run as of a past moment sees only what
    was planned by then; planning for real (``run_id``, under the planning
    lock) sees every message, also one planned for a later occurrence that
    was planned first.
    """
    ids = [r.customer_id for r in batch]
    when = func.coalesce(M.c.sent_at, M.c.send_after)
    if run_id:
        seen = or_(M.c.run_id.is_(None), M.c.run_id != run_id)
    else:
        seen = M.c.planned_at <= as_of
    counted = (
        false()
        if rules.exempt_from_frequency_cap
        else and_(
            M.c.counts_toward_cap.is_(True),
            M.c.status.in_(states.CAP),
            when > as_of - config.frequency_cap.per,
        )
    )
    rows = all_rows(
        conn,
        select(
            M.c.customer_id,
            func.max(
                case((and_(M.c.campaign == rules.name, M.c.status.in_(states.REENTRY)), when))
            ),
            func.sum(case((counted, 1), else_=0)),
            func.sum(
                case(
                    (and_(counted, M.c.status == "planned", M.c.priority < rules.priority), 1),
                    else_=0,
                )
            ),
        )
        .where(in_values(M.c.customer_id, ids), seen)
        .group_by(M.c.customer_id),
    )
    out = dict.fromkeys(ids, _NO_HISTORY)
    for cid, last_sent, used, preemptable in rows:
        if isinstance(last_sent, str):  # max() of text instants on SQLite
            last_sent = datetime.fromisoformat(last_sent)
        out[cid] = History(
            last_sent=ensure_utc(last_sent) if last_sent else None,
            cap_used=int(used or 0),
            preemptable=int(preemptable or 0),
        )
    return out


_NO_HISTORY = History()


def evaluate(
    engine: Engine,
    config: Config,
    campaign: Any,
    as_of: datetime,
    *,
    run_id: int | None = None,
    batch: int = 2000,
    limit: int | None = None,
    decision_only: bool = False,
) -> Iterator[list[Evaluated]]:
    """Decisions for everyone in the audience, in batches (reads only).

    ``decision_only``: recipients carry only the facts ``decide`` reads (the
    planner's choice; callers that render need the full facts)."""
    rules = CampaignRules.of(campaign)

    def facts(recipients: list[Recipient]) -> tuple[Suppressions, dict[str, History]]:
        with engine.connect() as conn:
            return (
                suppressions.load_for(conn, recipients),
                load_history(conn, recipients, rules, config, as_of, run_id),
            )

    def decided(
        recipients: list[Recipient], facts_of: Future[tuple[Suppressions, dict[str, History]]]
    ) -> list[Evaluated]:
        supp, history = facts_of.result()
        return [
            Evaluated(r, decide(r, rules, config, as_of, supp, history[r.customer_id]))
            for r in recipients
        ]

    # The facts of the next batch are read on a lane while this one is
    # decided. Batches hold disjoint customers (the stream is in id order) and
    # a planned batch's writes touch only its own customers' messages, so
    # reading them early reads exactly what reading them later would.
    with Lane("engage-facts", threaded=shared_across_threads(engine)) as lane:
        previous = None
        for recipients in stream_audience(
            engine,
            campaign.audience,
            config,
            as_of,
            batch=batch,
            limit=limit,
            decision_only=decision_only,
        ):
            current = (recipients, lane.submit(facts, recipients))
            if previous is not None:
                yield decided(*previous)
            previous = current
        if previous is not None:
            yield decided(*previous)


@dataclass
class DryRun:
    campaign: str
    as_of: datetime
    counts: Counter[str] = field(default_factory=Counter)
    decisions: list[Evaluated] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        from ..timeutil import isoformat_z

        decisions = []
        for e in self.decisions:
            d = e.decision
            item = {
                "customer_id": d.customer_id,
                "decision": d.action,
                "reason": d.reason,
                "channel": d.channel,
                "send_at": isoformat_z(d.send_at) if d.send_at else None,
            }
            if "error" in d.extra:  # a render_error: which template line, and why
                item["error"] = d.extra["error"]
            decisions.append(item)
        return {
            "campaign": self.campaign,
            "as_of": isoformat_z(self.as_of),
            "counts": dict(self.counts),
            "decisions": decisions,
        }


def count_decisions(counts: Counter[str], evaluated: Sequence[Evaluated]) -> None:
    for e in evaluated:
        counts["matched"] += 1
        d = e.decision
        if d.action == "send":
            counts["send"] += 1
            counts[f"send_{d.channel}"] += 1
        else:
            counts["skip"] += 1
            counts[d.reason or "skip"] += 1


def dry_run(
    engine: Engine,
    config: Config,
    campaign: Any,
    as_of: datetime,
    *,
    limit: int | None = None,
    check_render: Callable[[Evaluated], str | None] | None = None,
) -> DryRun:
    """Who would get what and why not; writes nothing.

    ``limit`` bounds the listed decisions, not the counts. ``check_render``
    renders a would-be message and returns an error text, turning that send
    into a ``render_error`` skip.
    """
    report = DryRun(campaign.name, as_of)
    for evaluated in evaluate(engine, config, campaign, as_of):
        if check_render is not None:
            evaluated = [_with_render_check(e, check_render) for e in evaluated]
        count_decisions(report.counts, evaluated)
        room = None if limit is None else max(limit - len(report.decisions), 0)
        report.decisions.extend(evaluated if room is None else evaluated[:room])
    return report


def _with_render_check(e: Evaluated, check: Callable[[Evaluated], str | None]) -> Evaluated:
    if e.decision.action != "send":
        return e
    error = check(e)
    if error is None:
        return e
    d = e.decision
    return Evaluated(
        e.recipient,
        Decision(
            d.customer_id, "skip", "render_error", d.channel, d.address, extra={"error": error}
        ),
    )


@dataclass
class PlanResult:
    campaign: str
    scheduled_at: datetime
    run_id: int
    already_planned: bool
    counts: dict[str, int]
    inserted: int


def _get_or_create_run(
    conn: Connection, campaign: str, scheduled_at: datetime, now: datetime
) -> Any:
    insert_ignore(
        conn,
        R,
        [
            {
                "campaign": campaign,
                "scheduled_at": scheduled_at,
                "state": "planning",
                "counts": {},
                "created_at": now,
            }
        ],
        ["campaign", "scheduled_at"],
    )
    return conn.execute(
        select(R).where(R.c.campaign == campaign, R.c.scheduled_at == scheduled_at)
    ).one()


def _preempt(
    conn: Connection, customer_ids: Sequence[str], rules: CampaignRules, now: datetime
) -> None:
    """For each customer, cancel the lowest-priority planned message holding a cap slot.

    One select whatever the batch size finds the victims (the candidates of
    every customer, ranked per customer in the order below; the first of each),
    then one guarded move cancels them: a victim a worker claimed meanwhile
    is left alone (and logged).
    """
    if not customer_ids:
        return
    rank = (
        func.row_number()
        .over(
            partition_by=M.c.customer_id,
            order_by=(M.c.priority, M.c.send_after.desc(), M.c.id),
        )
        .label("rank")
    )
    ranked = (
        select(M.c.id, rank)
        .where(
            in_values(M.c.customer_id, customer_ids),
            no_index(M.c.status) == states.State.PLANNED,
            M.c.priority < rules.priority,
            M.c.counts_toward_cap.is_(True),
        )
        .subquery("ranked")
    )
    victims = list(conn.execute(select(ranked.c.id).where(ranked.c.rank == 1)).scalars())
    states.move(
        conn,
        victims,
        from_=[states.State.PLANNED],
        to=states.State.CANCELLED,
        values={"error": f"preempted by {rules.name}", "updated_at": now},
        event="message_preempted",
    )


def plan_occurrence(
    engine: Engine,
    config: Config,
    campaign: Any,
    scheduled_at: datetime,
    *,
    now: datetime | None = None,
    batch: int = 20_000,
) -> PlanResult:
    """Plan one occurrence into the outbox. Idempotent per (campaign, scheduled_at).

    Holds the database's planning lock (``lock.py``) throughout: reentry and
    the frequency cap see every message planned before, by any process.

    ``batch``: customers per read/decide/write round; each round costs a few
    statements and a commit, each a handful of GIL hand-offs between the
    deciding and the writing thread (up to 5 ms each while the other thread
    computes), so bigger rounds are cheaper: 100,000 messages planned in
    4.7 s in rounds of 20,000 on PostgreSQL, 5.5 s in rounds of 5,000. A
    round holds tens of MB."""
    with planning_lock(engine):
        return _plan_occurrence(engine, config, campaign, scheduled_at, now=now, batch=batch)


def _plan_occurrence(
    engine: Engine,
    config: Config,
    campaign: Any,
    scheduled_at: datetime,
    *,
    now: datetime | None,
    batch: int,
) -> PlanResult:
    now = now or utcnow()
    scheduled_at = ensure_utc(scheduled_at)
    rules = CampaignRules.of(campaign)
    with engine.begin() as conn:
        run = _get_or_create_run(conn, campaign.name, scheduled_at, now)
    if run.state in ("planned", "missed"):
        return PlanResult(campaign.name, scheduled_at, run.id, True, dict(run.counts or {}), 0)

    counts: Counter[str] = Counter()
    key_prefix = dedupe_key(campaign.name, scheduled_at, "")  # + customer id
    expires_at = scheduled_at + getattr(campaign, "expires_after", DEFAULT_EXPIRES_AFTER)

    def write(rows: list[dict[str, Any]], preempting: list[str]) -> int:
        with engine.begin() as conn:
            _preempt(conn, preempting, rules, now)
            return insert_ignore(conn, M, rows, ["dedupe_key"])

    # Each batch is written on a second thread while the next one is decided:
    # the write is one statement or two, a wait for the database that does not
    # hold the GIL. A batch's writes touch only its own customers, so the order
    # of the batches' writes and the next batch's reads does not matter.
    with Lane("engage-plan-writer", threaded=shared_across_threads(engine)) as lane:
        writer = WriteBehind(lane)
        # Templates render at send time from the data current then: planning
        # reads only what the decisions need.
        for evaluated in evaluate(
            engine, config, campaign, scheduled_at, run_id=run.id, batch=batch, decision_only=True
        ):
            count_decisions(counts, evaluated)
            rows = []
            preempting = []
            for e in evaluated:
                d = e.decision
                if d.action != "send" and not d.held_out:
                    continue
                rows.append(
                    {
                        "dedupe_key": key_prefix + d.customer_id,
                        "campaign": campaign.name,
                        "run_id": run.id,
                        "customer_id": d.customer_id,
                        "channel": d.channel,
                        "address": d.address,
                        "template": campaign.template,
                        "priority": rules.priority,
                        "counts_toward_cap": not rules.exempt_from_frequency_cap,
                        "status": "held_out" if d.held_out else "planned",
                        "planned_at": now,
                        "send_after": d.send_at,
                        "expires_at": expires_at,
                        "attempts": 0,
                        "updated_at": now,
                    }
                )
                if d.preempts:
                    preempting.append(d.customer_id)
            writer.submit(write, rows, preempting)
        inserted = sum(writer.finish())
    with engine.begin() as conn:
        conn.execute(
            update(R)
            .where(R.c.id == run.id)
            .values(state="planned", counts=dict(counts), finished_at=utcnow(), error=None)
        )
    log.info(
        "planned",
        extra={
            "event": "planned",
            "campaign": campaign.name,
            "inserted": inserted,
            "counts": dict(counts),
        },
    )
    return PlanResult(campaign.name, scheduled_at, run.id, False, dict(counts), inserted)
