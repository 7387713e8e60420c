"""The message lifecycle (engage.db.states) on SQLite and PostgreSQL: the CHECK
constraint, guarded moves, claims, leases, requeue — and random interleavings
of all of them."""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from engage.db import make_engine, upgrade
from engage.db import states as lifecycle
from engage.db.models import Customer, Message
from engage.db.states import State

from .helpers import NOW, add_customer, add_message

S = State
LEASE = timedelta(minutes=5)


def _status(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        return {r.id: r.status for r in conn.execute(select(Message.id, Message.status))}


def test_the_migration_lists_every_state() -> None:
    """A new state needs a migration for the CHECK constraint."""
    from engage.db import MIGRATIONS

    path = MIGRATIONS / "versions" / "0003_message_lifecycle.py"
    spec = importlib.util.spec_from_file_location("m0003", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert set(module.STATES) == set(lifecycle.MESSAGE_STATES)
    assert set(lifecycle.TRANSITIONS) == set(State)


def test_the_database_refuses_a_state_that_does_not_exist(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)  # the migrations, not create_all: what operators run
        mid = add_message(engine, add_customer(engine, "ann"))
        for bad in ("released", "Sent", ""):
            with pytest.raises(IntegrityError), engine.begin() as conn:
                conn.execute(update(Message).where(Message.id == mid).values(status=bad))
        with engine.begin() as conn:
            conn.execute(update(Message).where(Message.id == mid).values(status="expired"))
    finally:
        engine.dispose()


def test_move_refuses_an_illegal_transition_and_logs_what_it_skipped(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    a = add_message(engine, add_customer(engine, "ann"))
    b = add_message(engine, add_customer(engine, "bob"), status="sent")
    with (
        engine.begin() as conn,
        pytest.raises(ValueError, match="illegal transition sent -> planned"),
    ):
        lifecycle.move(conn, [b], from_=[S.SENT], to=S.PLANNED)
    with caplog.at_level(logging.INFO, logger="engage.db.states"), engine.begin() as conn:
        moved = lifecycle.move(conn, [a, b], from_=[S.PLANNED], to=S.CANCELLED)
    assert moved == 1
    assert _status(engine) == {a: "cancelled", b: "sent"}
    [skipped] = [r for r in caplog.records if r.__dict__.get("event") == "message_move_skipped"]
    assert skipped.__dict__["message_ids"] == [a, b] and "1 of 2" in skipped.getMessage()


def test_a_claim_reserves_and_only_its_own_token_moves_the_rows(engine: Engine) -> None:
    ids = [add_message(engine, add_customer(engine, f"c{n}")) for n in range(5)]
    add_message(engine, add_customer(engine, "later"), send_after=NOW + timedelta(hours=1))
    with engine.begin() as conn:
        first = lifecycle.claim(conn, token="t1", owner="w1", limit=3, lease=LEASE, due_by=NOW)
        second = lifecycle.claim(conn, token="t2", owner="w2", limit=10, lease=LEASE, due_by=NOW)
    assert [r.id for r in first] == ids[:3] and [r.id for r in second] == ids[3:]
    assert {r.claim for r in first} == {"t1"}
    with engine.begin() as conn:
        # w2 cannot start w1's messages, nor record for them
        assert lifecycle.start(conn, ids[:3], claim="t2", lease=LEASE) == []
        assert lifecycle.start(conn, ids[:2], claim="t1", lease=LEASE) == ids[:2]
        stale = [{"id": ids[0], "claim": "t2", "provider_id": "x"}]
        assert lifecycle.move_each(conn, stale, from_=[S.SENDING], to=S.SENT) == 0
        mine = [{"id": ids[0], "claim": "t1", "provider_id": "p0"}]
        assert lifecycle.move_each(conn, mine, from_=[S.SENDING], to=S.SENT) == 1
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(select(Message))}
    assert rows[ids[0]].status == "sent" and rows[ids[0]].provider_id == "p0"
    assert rows[ids[0]].claim is None and rows[ids[0]].lease_expires_at is None
    assert (rows[ids[1]].status, rows[ids[1]].attempts, rows[ids[1]].claim) == ("sending", 1, "t1")
    assert (rows[ids[2]].status, rows[ids[2]].attempts) == ("claimed", 0)


def test_a_lost_lease_releases_what_was_reserved_and_makes_what_was_started_unknown(
    engine: Engine,
) -> None:
    ids = [add_message(engine, add_customer(engine, f"c{n}")) for n in range(3)]
    with engine.begin() as conn:
        lifecycle.claim(conn, token="dead", owner="w", limit=3, lease=LEASE, due_by=NOW, now=NOW)
        lifecycle.start(conn, ids[:1], claim="dead", lease=LEASE, now=NOW)
    with engine.begin() as conn:
        assert lifecycle.expire_leases(conn, NOW + LEASE - timedelta(seconds=1)) == (0, 0)
        assert lifecycle.expire_leases(conn, NOW + LEASE + timedelta(seconds=1)) == (2, 1)
    assert _status(engine) == {ids[0]: "unknown", ids[1]: "planned", ids[2]: "planned"}
    with engine.begin() as conn:  # the dead worker's late outcome changes nothing
        late = [{"id": ids[0], "claim": "dead", "provider_id": "late"}]
        assert lifecycle.move_each(conn, late, from_=[S.SENDING], to=S.SENT) == 0
        # and another worker can claim what was released
        again = lifecycle.claim(conn, token="t2", owner="w2", limit=9, lease=LEASE, due_by=NOW)
    assert [r.id for r in again] == ids[1:]


def test_a_live_worker_renews_its_leases_and_keeps_its_messages(engine: Engine) -> None:
    ids = [add_message(engine, add_customer(engine, f"c{n}")) for n in range(2)]
    with engine.begin() as conn:
        lifecycle.claim(conn, token="alive", owner="w", limit=9, lease=LEASE, due_by=NOW, now=NOW)
        lifecycle.start(conn, ids[:1], claim="alive", lease=LEASE, now=NOW)
        later = NOW + LEASE - timedelta(seconds=1)
        assert lifecycle.renew(conn, ["alive", "someone-else"], lease=LEASE, now=later) == 2
    with engine.begin() as conn:
        assert lifecycle.expire_leases(conn, NOW + LEASE + timedelta(seconds=1)) == (0, 0)
        assert lifecycle.expire_leases(conn, later + LEASE + timedelta(seconds=1)) == (1, 1)
    with engine.begin() as conn:
        assert lifecycle.renew(conn, ["alive"], lease=LEASE) == 0  # lost: nothing to renew


def test_leases_run_on_the_database_clock(engine: Engine) -> None:
    """Without ``now``, the lease is set and checked on one clock (PostgreSQL's
    ``now()``), so hosts with skewed clocks agree on it."""
    mid = add_message(engine, add_customer(engine, "ann"))
    with engine.begin() as conn:
        lifecycle.claim(
            conn, token="t", owner="w", limit=1, lease=timedelta(seconds=-1), due_by=NOW
        )
    with engine.begin() as conn:
        assert lifecycle.expire_leases(conn) == (1, 0)
    with engine.begin() as conn:
        lifecycle.claim(conn, token="t", owner="w", limit=1, lease=timedelta(minutes=5), due_by=NOW)
        assert lifecycle.expire_leases(conn) == (0, 0)
    assert _status(engine) == {mid: "claimed"}


def test_a_host_with_a_skewed_clock_agrees_on_leases(engine: Engine) -> None:
    """PostgreSQL: a worker whose own clock is a day behind (or ahead) sets and
    expires leases on the server's clock, so it neither steals a live worker's
    messages nor holds a dead one's forever. (SQLite has one host: its process
    clock is the database's.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server clock: every process is on the same host")
    from freezegun import freeze_time

    mid = add_message(engine, add_customer(engine, "ann"))
    with engine.connect() as conn:
        server_now = conn.execute(select(func.now())).scalar_one()
    with freeze_time(server_now - timedelta(days=1)):  # this host is a day behind
        with engine.begin() as conn:
            lifecycle.claim(
                conn, token="t", owner="w", limit=1, lease=timedelta(minutes=5), due_by=NOW
            )
    with engine.connect() as conn:
        until = conn.execute(select(Message.lease_expires_at)).scalar_one()
    assert server_now + timedelta(minutes=4) < until < server_now + timedelta(minutes=6)
    with freeze_time(server_now + timedelta(days=1)):  # another host, a day ahead
        with engine.begin() as conn:
            assert lifecycle.expire_leases(conn) == (0, 0)  # the lease is live
    assert _status(engine) == {mid: "claimed"}


def test_requeue_moves_only_what_it_may_and_says_what_it_moved(engine: Engine) -> None:
    unknown = add_message(engine, add_customer(engine, "a"), status="unknown", attempts=1)
    failed = add_message(engine, add_customer(engine, "b"), status="failed", campaign="other")
    sent = add_message(engine, add_customer(engine, "c"), status="sent")
    with engine.begin() as conn:
        where = lifecycle.requeue_filter(ids=[unknown, failed, sent, 999])
        assert lifecycle.requeue(conn, where, NOW) == [unknown, failed]
    with engine.connect() as conn:
        row = conn.execute(select(Message).where(Message.id == unknown)).one()
    assert (row.status, row.attempts, row.error, row.send_after) == ("planned", 0, None, NOW)
    with pytest.raises(ValueError, match="sent cannot be re-queued"):
        lifecycle.requeue_filter(statuses=["sent"])
    with engine.begin() as conn:
        conn.execute(update(Message).values(status="failed"))
        where = lifecycle.requeue_filter(statuses=["failed"], campaign="other", since=NOW)
        assert lifecycle.requeue(conn, where, NOW) == [failed]


# -- random interleavings ------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("claim"), st.sampled_from("ab"), st.integers(1, 4)),
        st.tuples(st.just("start"), st.sampled_from("ab"), st.integers(1, 3)),
        st.tuples(
            st.just("outcome"),
            st.sampled_from("ab"),
            st.sampled_from(["sent", "retry", "failed", "unknown", "refused"]),
        ),
        st.tuples(
            st.just("prepared"),
            st.sampled_from("ab"),
            st.sampled_from(["cancelled", "render_error", "expired", "release"]),
        ),
        st.tuples(st.just("crash"), st.sampled_from("ab"), st.just(0)),
        st.tuples(st.just("time"), st.just(""), st.integers(1, 60)),
        st.tuples(
            st.just("requeue"), st.just(""), st.sampled_from(["unknown", "failed", "expired"])
        ),
        st.tuples(
            st.just("webhook"), st.just(""), st.sampled_from(["delivered", "bounced", "failed"])
        ),
    ),
    min_size=20,
    max_size=60,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
# Two interleavings that must always run: a worker acting on a claim that
# expired and was taken by another worker (its start, and its late outcome).
@example(ops=[("claim", "a", 3), ("time", "", 60), ("claim", "b", 3), ("start", "a", 1)])
@example(
    ops=[
        ("claim", "a", 1),
        ("start", "a", 1),
        ("time", "", 60),
        ("requeue", "", "unknown"),
        ("claim", "b", 1),
        ("start", "b", 1),
        ("outcome", "a", "sent"),
    ]
)
def test_random_interleavings_never_break_the_lifecycle(engine: Engine, ops: list[Any]) -> None:
    """Workers claim, start and record; leases run out; operators requeue;
    webhooks arrive — in any order. No illegal transition, no message started
    again once it may have reached the provider (unless an operator re-queued
    it), and in the end every message is waiting or settled."""
    with engine.begin() as conn:
        conn.execute(delete(Message))
        conn.execute(delete(Customer))
        conn.execute(
            insert(Customer),
            [{"id": f"c{n}", "attributes": {}, "created_at": NOW} for n in range(3)],
        )
        conn.execute(
            insert(Message),
            [
                {
                    "dedupe_key": f"k{n}",
                    "campaign": "x",
                    "customer_id": f"c{n}",
                    "channel": "email",
                    "template": "winback",
                    "status": "planned",
                    "planned_at": NOW,
                    "send_after": NOW,
                    "attempts": 0,
                    "priority": 50,
                    "counts_toward_cap": True,
                }
                for n in range(3)
            ],
        )
    lease = timedelta(seconds=30)
    clock = [NOW]
    held: dict[str, dict[int, str]] = {"a": {}, "b": {}}  # worker -> {id: claim token}
    started: dict[str, set[int]] = {"a": set(), "b": set()}
    may_have_reached: set[int] = set()  # started, and not known to have been refused
    tokens = Counter[str]()
    before = _status(engine)
    for op, worker, arg in ops:
        claims = _claims(engine)  # a worker's move may touch only rows holding its token
        touched: dict[int, str] = {}
        with engine.begin() as conn:
            if op == "claim":
                tokens[worker] += 1
                token = f"{worker}{tokens[worker]}"
                rows = lifecycle.claim(
                    conn,
                    token=token,
                    owner=worker,
                    limit=arg,
                    lease=lease,
                    due_by=clock[0],
                    now=clock[0],
                )
                held[worker].update({r.id: token for r in rows})
            elif op == "start":
                mine = [i for i in held[worker] if i not in started[worker]][:arg]
                for mid in mine:
                    touched[mid] = held[worker][mid]
                    ok = lifecycle.start(
                        conn, [mid], claim=held[worker][mid], lease=lease, now=clock[0]
                    )
                    if ok:
                        assert mid not in may_have_reached, f"message {mid} started twice"
                        may_have_reached.add(mid)
                        started[worker].add(mid)
                    else:
                        del held[worker][mid]  # lost it: never sent
            elif op == "outcome" and started[worker]:
                mid = min(started[worker])
                touched[mid] = held[worker][mid]
                row = [{"id": mid, "claim": held[worker].pop(mid)}]
                started[worker].discard(mid)
                to = S.PLANNED if arg == "refused" else S(arg)  # refused: bad credentials
                if lifecycle.move_each(conn, row, from_=[S.SENDING], to=to) and to in (
                    S.RETRY,
                    S.PLANNED,
                ):
                    may_have_reached.discard(mid)  # known not to have been sent
            elif op == "prepared":
                waiting = [i for i in held[worker] if i not in started[worker]]
                if waiting:
                    mid = waiting[0]
                    touched[mid] = held[worker][mid]
                    row = [{"id": mid, "claim": held[worker].pop(mid)}]
                    to = S.PLANNED if arg == "release" else S(arg)
                    lifecycle.move_each(conn, row, from_=[S.CLAIMED], to=to)
            elif op == "crash":
                held[worker].clear()
                started[worker].clear()
            elif op == "time":
                clock[0] += timedelta(seconds=arg)
                lifecycle.expire_leases(conn, clock[0])
            elif op == "requeue":
                moved = lifecycle.requeue(conn, lifecycle.requeue_filter(statuses=[arg]), clock[0])
                may_have_reached.difference_update(moved)
            elif op == "webhook":
                sent = [i for i, s in _status_in(conn).items() if s in ("sent", "unknown")]
                if sent:
                    lifecycle.move(conn, sent[:1], from_=[S.SENT, S.UNKNOWN], to=S(arg))
        after = _status(engine)
        for mid, old in before.items():
            new = after[mid]
            assert new == old or lifecycle.allowed(old, new), f"{op}: {mid} {old} -> {new}"
        for mid, token in touched.items():
            if claims[mid] != token:  # an expired claim: the row is another's now, or nobody's
                assert after[mid] == before[mid], f"{op} with a stale claim moved {mid}"
        before = after
    with engine.begin() as conn:
        lifecycle.expire_leases(conn, clock[0] + 2 * lease)
    final = _status(engine)
    assert all(
        State(s) in lifecycle.SETTLED or State(s) in lifecycle.DUE for s in final.values()
    ), final


def _claims(engine: Engine) -> dict[int, str | None]:
    with engine.connect() as conn:
        return {r.id: r.claim for r in conn.execute(select(Message.id, Message.claim))}


def _status_in(conn: Any) -> dict[int, str]:
    return {r.id: r.status for r in conn.execute(select(Message.id, Message.status))}
