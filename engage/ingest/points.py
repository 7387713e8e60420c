"""Loyalty points import: earned lots and FIFO redemptions, in file order.

A batch is cut into runs of consecutive earns and consecutive redemptions,
written in order inside one transaction, so a redemption sees every lot
earned before it in the file while a long run of earns is still one
statement. A redemption consumes the oldest unexpired lots first (earned_at,
then id) among lots with ``earned_at <= redeemed_at < expires_at`` and points
left; one larger than that balance is a row error and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, select, text, update

from ..db.bulk import in_values
from ..db.load import load_rows
from ..db.models import PointsAllocation, PointsLot, PointsRedemption
from .fields import EarnRec, RedeemRec, RowInvalid
from .store import (
    INSERTED,
    UNCHANGED,
    UPDATED,
    FactsUpkeep,
    Outcome,
    chunks,
    fetch_by,
    known_customers,
    unknown_customer,
    write_planned,
)

_LOT: Table = PointsLot.__table__  # type: ignore[assignment]
_REDEMPTION: Table = PointsRedemption.__table__  # type: ignore[assignment]
_ALLOCATION: Table = PointsAllocation.__table__  # type: ignore[assignment]
_LOT_FIELDS = ("customer_id", "points", "remaining", "earned_at", "expires_at")
_LOT_COLUMNS = ("external_id", *_LOT_FIELDS)
_REDEMPTION_FIELDS = ("customer_id", "points", "redeemed_at")


@dataclass(slots=True)
class _Lot:
    id: int
    remaining: int
    earned_at: datetime
    expires_at: datetime
    taken: bool = False  # remaining changed in this run


def write_points(
    conn: Connection, recs: Sequence[EarnRec | RedeemRec], now: datetime, upkeep: FactsUpkeep
) -> list[Outcome]:
    """Apply earns and redemptions in order; one outcome per record."""
    known = known_customers(conn, (r.customer_id for r in recs))
    outcomes: list[Outcome | None] = [None] * len(recs)
    valid: list[int] = []
    for i, rec in enumerate(recs):
        if rec.customer_id in known:
            valid.append(i)
        else:
            outcomes[i] = unknown_customer(rec.customer_id)
    for is_earn, group in groupby(valid, key=lambda i: isinstance(recs[i], EarnRec)):
        idx = list(group)
        run = [recs[i] for i in idx]
        if is_earn:
            outs = _write_earns(conn, run, upkeep)  # type: ignore[arg-type]
        else:
            outs = _write_redemptions(conn, run)  # type: ignore[arg-type]
        for i, out in zip(idx, outs, strict=True):
            outcomes[i] = out
    upkeep.refresh(
        conn, (recs[i].customer_id for i in valid if outcomes[i] in (INSERTED, UPDATED))
    )
    return [o if o is not None else RowInvalid("points", "not processed") for o in outcomes]


def _write_earns(
    conn: Connection, recs: Sequence[EarnRec], upkeep: FactsUpkeep
) -> list[Outcome]:
    """Upsert lots on ``external_id``. Changing a lot's points moves ``remaining``
    by the same amount, which must not drop below zero (points already redeemed)."""
    outcomes: list[Outcome] = [INSERTED] * len(recs)

    def plan(indices: Sequence[int], existing: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
        state: dict[str, dict[str, Any]] = {}
        dirty: dict[str, None] = {}
        for i in indices:
            rec = recs[i]
            cur = state.get(rec.external_id) or existing.get(rec.external_id)
            new = {
                "external_id": rec.external_id,
                "customer_id": rec.customer_id,
                "points": rec.points,
                "remaining": rec.points,
                "earned_at": rec.earned_at,
                "expires_at": rec.expires_at,
            }
            if cur is None:
                outcome: Outcome = INSERTED
            elif cur["customer_id"] != rec.customer_id:
                outcomes[i] = RowInvalid(
                    "external_id",
                    f"lot {rec.external_id!r} belongs to customer {cur['customer_id']!r}",
                )
                continue
            else:
                used = cur["points"] - cur["remaining"]
                if rec.points < used:
                    outcomes[i] = RowInvalid(
                        "points", f"lot {rec.external_id!r} already had {used} points redeemed"
                    )
                    continue
                new["remaining"] = rec.points - used
                outcome = UNCHANGED if new == cur else UPDATED
            state[rec.external_id] = new
            if outcome != UNCHANGED:
                dirty[rec.external_id] = None
            outcomes[i] = outcome
        return [tuple(state[ext][c] for c in _LOT_COLUMNS) for ext in dirty]

    def fetch(keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return {
            ext: {"external_id": ext, **dict(zip(_LOT_FIELDS, values, strict=True))}
            for ext, values in fetch_by(conn, _LOT, "external_id", keys, _LOT_FIELDS).items()
        }

    write_planned(
        conn, _LOT, upkeep, [r.external_id for r in recs], range(len(recs)), plan, fetch,
        _LOT_COLUMNS, update=_LOT_COLUMNS[2:],
    )  # fmt: skip
    return outcomes


def _load_lots(conn: Connection, recs: Sequence[RedeemRec]) -> dict[str, list[_Lot]]:
    """Candidate lots per customer, FIFO order, locked on PostgreSQL."""
    t = _LOT.c
    if not recs:
        return {}
    earliest = min(r.redeemed_at for r in recs)
    latest = max(r.redeemed_at for r in recs)
    lots: dict[str, list[_Lot]] = {}
    for chunk in chunks(dict.fromkeys(r.customer_id for r in recs)):
        query = (
            select(t.id, t.customer_id, t.remaining, t.earned_at, t.expires_at)
            .where(
                in_values(t.customer_id, chunk),
                t.remaining > 0,
                t.earned_at <= latest,
                t.expires_at > earliest,
            )
            .order_by(t.customer_id, t.earned_at, t.id)
            .with_for_update()
        )
        for row in conn.execute(query):
            lots.setdefault(row.customer_id, []).append(
                _Lot(row.id, row.remaining, row.earned_at, row.expires_at)
            )
    return lots


def _write_redemptions(conn: Connection, recs: Sequence[RedeemRec]) -> list[Outcome]:
    """Insert new redemptions with their FIFO allocations; a known
    ``external_id`` with the same values is unchanged (never re-applied)."""
    table = _REDEMPTION
    existing = {
        ext: {"external_id": ext, **dict(zip(_REDEMPTION_FIELDS, values, strict=True))}
        for ext, values in fetch_by(
            conn, table, "external_id", (r.external_id for r in recs), _REDEMPTION_FIELDS
        ).items()
    }
    lots = _load_lots(conn, [r for r in recs if r.external_id not in existing])
    seen: dict[str, dict[str, Any]] = {}
    fresh: list[dict[str, Any]] = []
    allocations: dict[str, list[tuple[int, int]]] = {}
    outcomes: list[Outcome] = []
    for rec in recs:
        values = {
            "external_id": rec.external_id,
            "customer_id": rec.customer_id,
            "points": rec.points,
            "redeemed_at": rec.redeemed_at,
        }
        prior = seen.get(rec.external_id) or existing.get(rec.external_id)
        if prior is not None:
            if prior == values:
                outcomes.append(UNCHANGED)
            else:
                outcomes.append(
                    RowInvalid(
                        "external_id",
                        f"redemption {rec.external_id!r} is already recorded with other values",
                    )
                )
            continue
        at = rec.redeemed_at
        eligible = [
            lot
            for lot in lots.get(rec.customer_id, ())
            if lot.remaining > 0 and lot.earned_at <= at < lot.expires_at
        ]
        available = sum(lot.remaining for lot in eligible)
        if available < rec.points:
            outcomes.append(
                RowInvalid(
                    "points",
                    f"redemption of {rec.points} exceeds the available balance of {available}"
                    f" at {at.isoformat().replace('+00:00', 'Z')}",
                )
            )
            continue
        need, taken = rec.points, []
        for lot in eligible:
            use = min(need, lot.remaining)
            lot.remaining -= use
            lot.taken = True
            taken.append((lot.id, use))
            need -= use
            if need == 0:
                break
        allocations[rec.external_id] = taken
        seen[rec.external_id] = values
        fresh.append(values)
        outcomes.append(INSERTED)
    if fresh:
        ids = dict(
            (ext, rid)
            for rid, ext in conn.execute(
                insert(table).returning(table.c.id, table.c.external_id), fresh
            )
        )
        load_rows(
            conn,
            _ALLOCATION,
            ("redemption_id", "lot_id", "points"),
            [(ids[e], lot_id, pts) for e, taken in allocations.items() for lot_id, pts in taken],
        )
        _set_remaining(
            conn,
            [(lot.id, lot.remaining) for customer_lots in lots.values()
             for lot in customer_lots if lot.taken],
        )  # fmt: skip
    return outcomes


def _set_remaining(conn: Connection, pairs: list[tuple[int, int]]) -> None:
    """The lots' new ``remaining``: one statement on PostgreSQL (an UPDATE per
    lot would also run the facts trigger once per lot), an executemany on
    SQLite (its triggers are row-level anyway)."""
    if not pairs:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "UPDATE points_lot SET remaining = v.remaining"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:left AS integer[]))"
                " AS v(id, remaining) WHERE points_lot.id = v.id"
            ),
            {"ids": [i for i, _ in pairs], "left": [n for _, n in pairs]},
        )
        return
    conn.execute(
        update(_LOT).where(_LOT.c.id == bindparam("lot_id")).values(remaining=bindparam("left")),
        [{"lot_id": i, "left": n} for i, n in pairs],
    )
