"""engage import: CSV/JSONL rows in, idempotent upserts out, bad rows located.

Every test runs on a real SQLite file and a real PostgreSQL schema.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from engage.config import Config
from engage.db.models import Customer, Interaction, PointsAllocation, PointsLot, PointsRedemption
from engage.errors import EngageError
from engage.ingest import ImportResult, import_file, import_rows

from .installed import ENGAGE as INSTALLED_ENGAGE

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CONFIG = Config(default_phone_region="US")


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def run(engine: Engine, kind: str, path: str, **kw: Any) -> ImportResult:
    kw.setdefault("now", NOW)
    return import_file(engine, CONFIG, kind, path, **kw)


def rows(engine: Engine, model: Any) -> list[dict[str, Any]]:
    """Every row of a table as dicts, in primary-key order (all columns)."""
    table = model.__table__
    with engine.connect() as conn:
        result = conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(r) for r in result.mappings()]


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    models = (Customer, Interaction, PointsLot, PointsRedemption, PointsAllocation)
    return {m.__tablename__: rows(engine, m) for m in models}


def customer(engine: Engine, cid: str) -> dict[str, Any]:
    found = [r for r in rows(engine, Customer) if r["id"] == cid]
    assert len(found) == 1, cid
    return found[0]


def messages(result: ImportResult) -> list[str]:
    return [str(p) for p in result.errors]


CUSTOMERS_CSV = """\
id,email,phone,first_name,last_name,timezone,tier,email_opt_in,sms_opt_in,created_at,Country
c1,Ann@Example.COM,(415) 555-2671,Ann,Lee,Europe/Paris,gold,yes,N,2025-01-02T03:04:05+02:00,US
c2,not-an-email@,,Bob,,,,,,,US
c3,c3@example.com,555-12,Cy,,,,,,,US
c4,c4@example.com,,"Dee
Multi",,Mars/Olympus,,,,,US
c5,c5@example.com,,Eve,,,,,,2025-02-30,US

,c6@example.com,,NoId,,,,,,,US
c7,c7@example.com,+33 6 12 34 56 78,Zoé,,America/New_York,,1,true,,
"""


def test_customers_csv_keeps_good_rows_and_locates_bad_ones(engine: Engine, tmp_path: Path):
    path = write(tmp_path / "customers.csv", CUSTOMERS_CSV)
    rejects = tmp_path / "rejects.csv"
    result = run(engine, "customers", path, rejects=rejects)

    assert messages(result) == [
        f"{path}:3: email: not a valid address 'not-an-email@': There must be something"
        " after the @-sign.",
        f"{path}:5: first_name: contains a line break: the quote opened on line 5 runs to"
        " line 6; is it closed where it should be?",
        f"{path}:7: created_at: not an ISO-8601 date or datetime: '2025-02-30'",
        f"{path}:9: id: required",
    ]
    # a phone that does not parse is dropped, not the customer
    assert [str(w) for w in result.warnings] == [
        f"{path}:4: warning: phone: not a valid phone number '555-12' (region US from the"
        " country column); the customer is imported without it",
    ]
    assert (result.read, result.inserted, result.updated, result.rejected) == (7, 3, 0, 4)
    assert result.warning_counts == {"phone_dropped": 1}
    assert "warnings: 1 phone numbers dropped" in result.summary()

    c1 = customer(engine, "c1")
    assert c1["email"] == "Ann@example.com"  # domain lower-cased, local part kept
    assert c1["phone"] == "+14155552671"  # E.164 with the default region
    assert (c1["timezone"], c1["tier"], c1["email_opt_in"], c1["sms_opt_in"]) == (
        "Europe/Paris",
        "gold",
        True,
        False,
    )
    assert c1["created_at"] == datetime(2025, 1, 2, 1, 4, 5, tzinfo=UTC)
    assert c1["attributes"] == {"Country": "US"}  # unknown columns land in attributes
    c3 = customer(engine, "c3")
    assert (c3["email"], c3["phone"], c3["attributes"]) == ("c3@example.com", None, {"Country": "US"})
    c7 = customer(engine, "c7")
    assert (c7["phone"], c7["first_name"], c7["attributes"]) == ("+33612345678", "Zoé", {})
    assert c7["created_at"] == NOW  # defaults to the import time
    assert c7["locale"] is None and c7["last_name"] is None

    lines = rejects.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        "id,email,phone,first_name,last_name,timezone,tier,email_opt_in,sms_opt_in,"
        "created_at,Country,error"
    )
    assert lines[1] == (
        f"c2,not-an-email@,,Bob,,,,,,,US,{path}:3: email: not a valid address 'not-an-email@':"
        " There must be something after the @-sign."
    )
    # the multi-line record is written back whole, quoted
    assert lines[2] == 'c4,c4@example.com,,"Dee'
    assert lines[3].startswith('Multi",,Mars/Olympus,,,,,US,')
    assert lines[-1] == f",c6@example.com,,NoId,,,,,,,US,{path}:9: id: required"
    assert len(lines) == 1 + 4 + 1  # header, four rejects, one extra physical line


def test_customers_jsonl_with_attributes_and_broken_lines(engine: Engine, tmp_path: Path):
    objs = [
        {
            "id": "j1",
            "email": "j1@Shop.Example",
            "Email_Opt_In": True,
            "attributes": {"vip": 1},
            "country": "CA",
        },
        "not json {",
        {"id": 42, "phone": "+1 202 555 0143", "sms_opt_in": 1},
        ["a", "list"],
        {"id": "j3", "timezone": "Nowhere/Else"},
        {"id": "j4", "attributes": "flat"},
    ]
    text = "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs)
    path = write(tmp_path / "customers.jsonl", text.replace("\n[", "\n\n["))  # + a blank line
    rejects = tmp_path / "rejects.jsonl"
    result = run(engine, "customers", path, rejects=rejects)

    assert [(p.line, p.field) for p in result.errors] == [
        (2, "json"),
        (5, "json"),
        (6, "timezone"),
        (7, "attributes"),
    ]
    assert str(result.errors[1]) == f"{path}:5: json: expected a JSON object, got list"
    j1 = customer(engine, "j1")
    assert j1["email"] == "j1@shop.example" and j1["email_opt_in"] is True
    assert j1["attributes"] == {"vip": 1, "country": "CA"}
    c42 = customer(engine, "42")
    assert c42["phone"] == "+12025550143" and c42["sms_opt_in"] is True

    rejected = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert rejected[0] == {"_line": "not json {", "_error": str(result.errors[0])}
    assert rejected[1] == {"_line": ["a", "list"], "_error": str(result.errors[1])}
    assert rejected[2] == {"id": "j3", "timezone": "Nowhere/Else", "_error": str(result.errors[2])}
    assert rejected[3]["id"] == "j4" and rejected[3]["_error"].endswith("must be a JSON object")


def test_customer_update_overwrites_given_fields_only(engine: Engine, tmp_path: Path):
    first = write(
        tmp_path / "a.csv",
        "id,email,phone,tier,email_opt_in,sms_opt_in,created_at,city\n"
        "u1,u1@example.com,+14155552671,silver,yes,yes,2024-05-01,Lyon\n",
    )
    run(engine, "customers", first)
    before = customer(engine, "u1")

    # no phone or created_at column; empty cells mean "not given"
    second = write(
        tmp_path / "b.csv",
        "id,email,tier,email_opt_in,sms_opt_in,zip\n"
        "u1,new@example.com,,,no,69001\n"
        "u1,newer@example.com,gold,,,\n",  # same id twice in one batch: last one wins
    )
    result = run(engine, "customers", second)
    assert (result.inserted, result.updated, result.unchanged, result.rejected) == (0, 2, 0, 0)
    after = customer(engine, "u1")
    assert after["email"] == "newer@example.com"
    assert after["tier"] == "gold"
    assert after["phone"] == before["phone"] == "+14155552671"
    assert after["email_opt_in"] is True  # empty = unchanged
    assert after["sms_opt_in"] is False
    assert after["created_at"] == before["created_at"] == datetime(2024, 5, 1, tzinfo=UTC)
    assert after["attributes"] == {"city": "Lyon", "zip": 69001}  # merged; a column of numbers
    assert after["updated_at"] == NOW


def test_new_customer_opt_ins_default_to_false(engine: Engine, tmp_path: Path):
    path = write(tmp_path / "c.csv", "id,email_opt_in\nn1,\nn2,maybe\n")
    result = run(engine, "customers", path)
    assert messages(result) == [
        f"{path}:3: email_opt_in: expected true/false, yes/no, y/n or 1/0, got 'maybe'"
    ]
    n1 = customer(engine, "n1")
    assert (n1["email_opt_in"], n1["sms_opt_in"]) == (False, False)


INTERACTIONS_CSV = """\
customer_id,kind,occurred_at,amount,external_id,channel
k1,order,2026-02-01T10:00:00,19.99,o-1,web
k1,visit,2026-02-02T10:00:00+01:00,,,
ghost,order,2026-02-03,5,o-2,
k1,,2026-02-04,,,
k1,order,yesterday,,,
k1,order,2026-02-05,ten,,
k1,a-kind-name-that-is-longer-than-32-characters,2026-02-05,,,
k2,order,2026-02-06,7.5,o-3,store
"""


def seed_customers(engine: Engine, tmp_path: Path, *ids: str) -> None:
    path = write(tmp_path / "seed.csv", "id\n" + "".join(f"{i}\n" for i in ids))
    assert run(engine, "customers", path).inserted == len(ids)


def test_interactions_csv(engine: Engine, tmp_path: Path):
    seed_customers(engine, tmp_path, "k1", "k2")
    path = write(tmp_path / "interactions.csv", INTERACTIONS_CSV)
    result = run(engine, "interactions", path)
    assert messages(result) == [
        f"{path}:4: customer_id: unknown customer 'ghost'",
        f"{path}:5: kind: required",
        f"{path}:6: occurred_at: not an ISO-8601 date or datetime: 'yesterday'",
        f"{path}:7: amount: not a number: 'ten'",
        f"{path}:8: kind: longer than 32 characters",
    ]
    assert (result.read, result.inserted, result.rejected) == (8, 3, 5)
    got = {r["external_id"]: r for r in rows(engine, Interaction)}
    assert got["o-1"]["occurred_at"] == datetime(2026, 2, 1, 10, tzinfo=UTC)  # no offset = UTC
    assert got["o-1"]["amount"] == Decimal("19.99")
    assert got["o-1"]["attributes"] == {"channel": "web"}
    assert got["o-3"]["amount"] == Decimal("7.50")
    (auto,) = [r for ext, r in got.items() if ext.startswith("auto:")]
    assert auto["kind"] == "visit" and auto["amount"] is None
    assert auto["occurred_at"] == datetime(2026, 2, 2, 9, tzinfo=UTC)
    assert auto["attributes"] == {}


def test_interaction_update_on_external_id(engine: Engine, tmp_path: Path):
    seed_customers(engine, tmp_path, "k1")
    first = write(
        tmp_path / "a.jsonl",
        '{"customer_id":"k1","kind":"order","occurred_at":"2026-02-01","amount":10,'
        '"external_id":"o-9","attributes":{"sku":"A"}}\n',
    )
    second = write(
        tmp_path / "b.jsonl",
        '{"customer_id":"k1","kind":"order","occurred_at":"2026-02-01","external_id":"o-9",'
        '"coupon":"X"}\n',
    )
    assert run(engine, "interactions", first).inserted == 1
    result = run(engine, "interactions", second)
    assert (result.updated, result.inserted) == (1, 0)
    (row,) = rows(engine, Interaction)
    assert row["amount"] == Decimal("10.00")  # not given: kept
    assert row["attributes"] == {"sku": "A", "coupon": "X"}


def test_reimporting_the_same_files_changes_nothing(engine: Engine, tmp_path: Path):
    customers = write(tmp_path / "customers.csv", CUSTOMERS_CSV)
    seed_customers(engine, tmp_path, "k1", "k2", "p1")
    interactions = write(tmp_path / "interactions.csv", INTERACTIONS_CSV)
    points = write(tmp_path / "points.csv", POINTS_CSV)
    first = [
        run(engine, k, p)
        for k, p in (("customers", customers), ("interactions", interactions), ("points", points))
    ]
    before = snapshot(engine)
    assert len(before["interaction"]) == 3 and len(before["points_redemption"]) == 1

    later = NOW + timedelta(days=1)  # a write would show in updated_at / created_at
    again = [
        run(engine, k, p, now=later)
        for k, p in (("customers", customers), ("interactions", interactions), ("points", points))
    ]
    assert snapshot(engine) == before  # every column of every row
    for old, new in zip(first, again, strict=True):
        assert (new.inserted, new.updated) == (0, 0)
        assert new.unchanged == old.inserted + old.updated
        assert new.rejected == old.rejected
        assert "0 imported (0 new, 0 updated)" in new.summary()


POINTS_CSV = """\
customer_id,points,earned_at,expires_at,external_id
p1,100,2026-01-01,2026-02-01,old
p1,100,2026-01-10,2026-12-31,mid
p1,100,2026-02-01,2026-12-31,new
p1,-150,2026-03-01T09:00:00Z,,r-1
p1,-500,2026-03-02,,r-2
p1,-10,2026-03-02,2026-12-31,r-3
p1,20,2026-03-02,2026-03-01,bad-exp
p1,20,2026-03-02,,no-exp
nobody,5,2026-03-02,2026-12-31,x
"""


def test_points_fifo_redemption_skips_expired_lots(engine: Engine, tmp_path: Path):
    seed_customers(engine, tmp_path, "p1")
    path = write(tmp_path / "points.csv", POINTS_CSV)
    result = run(engine, "points", path, batch_size=3)  # lots and redemptions in separate batches
    assert messages(result) == [
        f"{path}:6: points: redemption of 500 exceeds the available balance of 50"
        " at 2026-03-02T00:00:00Z",
        f"{path}:7: expires_at: must be empty for a redemption (negative points)",
        f"{path}:8: expires_at: must be after earned_at",
        f"{path}:9: expires_at: required for earned points",
        f"{path}:10: customer_id: unknown customer 'nobody'",
    ]
    lots = {r["external_id"]: r for r in rows(engine, PointsLot)}
    # 'old' expired on Feb 1 and is not touched; 'mid' (older) is used up before 'new'
    assert {k: (v["points"], v["remaining"]) for k, v in lots.items()} == {
        "old": (100, 100),
        "mid": (100, 0),
        "new": (100, 50),
    }
    (redemption,) = rows(engine, PointsRedemption)
    assert (redemption["points"], redemption["external_id"]) == (150, "r-1")
    assert redemption["redeemed_at"] == datetime(2026, 3, 1, 9, tzinfo=UTC)
    allocations = {
        a["lot_id"]: a["points"]
        for a in rows(engine, PointsAllocation)
        if a["redemption_id"] == redemption["id"]
    }
    assert allocations == {lots["mid"]["id"]: 100, lots["new"]["id"]: 50}


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_redemption_sees_lots_earlier_in_the_same_file(
    engine: Engine, tmp_path: Path, batch_size: int
):
    seed_customers(engine, tmp_path, "p1", "p2")
    path = write(
        tmp_path / "points.jsonl",
        "\n".join(
            json.dumps(o)
            for o in (
                {
                    "customer_id": "p1",
                    "points": 30,
                    "earned_at": "2026-01-01",
                    "expires_at": "2027-01-01",
                },
                {"customer_id": "p1", "points": -20, "redeemed_at": "2026-01-02"},
                {
                    "customer_id": "p2",
                    "points": 10,
                    "earned_at": "2026-01-01",
                    "expires_at": "2027-01-01",
                },
                {"customer_id": "p1", "points": -20, "occurred_at": "2026-01-03"},
                {
                    "customer_id": "p1",
                    "points": 15,
                    "earned_at": "2026-01-04",
                    "expires_at": "2027-01-01",
                },
                {"customer_id": "p1", "points": -25, "redeemed_at": "2026-01-05"},
            )
        ),
    )
    result = run(engine, "points", path, batch_size=batch_size)
    assert messages(result) == [
        f"{path}:4: points: redemption of 20 exceeds the available balance of 10"
        " at 2026-01-03T00:00:00Z"
    ]
    remaining = sorted(
        (r["customer_id"], r["points"], r["remaining"]) for r in rows(engine, PointsLot)
    )
    assert remaining == [("p1", 15, 0), ("p1", 30, 0), ("p2", 10, 10)]
    assert sorted(r["points"] for r in rows(engine, PointsRedemption)) == [20, 25]
    assert sum(a["points"] for a in rows(engine, PointsAllocation)) == 45

    again = run(engine, "points", path, batch_size=batch_size)
    assert (again.inserted, again.unchanged, again.rejected) == (0, 5, 1)


def test_changing_an_earned_lot_keeps_what_was_redeemed(engine: Engine, tmp_path: Path):
    seed_customers(engine, tmp_path, "p1")
    first = write(
        tmp_path / "a.csv",
        "customer_id,points,earned_at,expires_at,external_id\n"
        "p1,100,2026-01-01,2026-12-31,lot\n"
        "p1,-60,2026-01-02,,r\n",
    )
    run(engine, "points", first)
    second = write(
        tmp_path / "b.csv",
        "customer_id,points,earned_at,expires_at,external_id\n"
        "p1,80,2026-01-01,2027-06-30,lot\n"
        "p1,50,2026-01-01,2027-06-30,lot\n",
    )
    result = run(engine, "points", second)
    assert messages(result) == [f"{second}:3: points: lot 'lot' already had 60 points redeemed"]
    (lot,) = rows(engine, PointsLot)
    assert (lot["points"], lot["remaining"]) == (80, 20)
    assert lot["expires_at"] == datetime(2027, 6, 30, tzinfo=UTC)


def test_csv_without_required_columns_is_refused_before_writing(engine: Engine, tmp_path: Path):
    path = write(tmp_path / "i.csv", "customer,kind,when\nk1,order,2026-01-01\n")
    rejects = tmp_path / "rejects.csv"
    with pytest.raises(EngageError) as info:
        run(engine, "interactions", path, rejects=rejects)
    assert str(info.value) == (
        f"{path}:1: missing required column(s) for interactions: customer_id, occurred_at"
        " (found: customer, kind, when)"
    )
    assert not rejects.exists()
    with pytest.raises(EngageError, match="no such file"):
        run(engine, "customers", str(tmp_path / "missing.csv"))
    with pytest.raises(EngageError, match="must not be the input file"):
        run(engine, "interactions", path, rejects=path)
    assert Path(path).read_text().startswith("customer,kind,when\n")
    with pytest.raises(EngageError, match="unknown import kind 'sheep'"):
        run(engine, "sheep", path)
    with pytest.raises(EngageError, match="cannot tell the format"):
        run(engine, "customers", write(tmp_path / "c.txt", "id\nx\n"))
    assert snapshot(engine)["customer"] == []


def test_bad_bytes_and_ragged_rows_reject_one_row(engine: Engine, tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfid,first_name\nb1,ok\nb2,\xff\xfe\nb3,a,extra\nb4,fine\n")
    result = run(engine, "customers", str(path))
    assert messages(result) == [
        f"{path}:3: encoding: not valid UTF-8 text",
        f"{path}:4: csv: expected 2 cells as in the header, found 3",
    ]
    assert [r["id"] for r in rows(engine, Customer)] == ["b1", "b4"]


def test_gzip_and_import_rows_for_the_api(engine: Engine, tmp_path: Path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('{"id": "g1", "tier": "gold"}\n')
    assert run(engine, "customers", str(path)).inserted == 1

    seen: list[str] = []
    items = [
        (0, {"customer_id": "g1", "kind": "email_click", "occurred_at": "2026-02-01T00:00:00Z"}),
        (1, {"customer_id": "g1", "kind": "order", "occurred_at": 20260201}),
        (2, ["not", "an", "object"]),
    ]
    result = import_rows(
        engine,
        CONFIG,
        "interactions",
        items,  # an API may hand over anything, not only objects
        source="request",
        now=NOW,
        on_reject=lambda row, problem: seen.append(f"{row.line} {problem}"),
    )
    assert (result.inserted, result.rejected) == (1, 2)
    assert seen == [
        "1 request:1: occurred_at: expected an ISO-8601 date/time string, got 20260201",
        "2 request:2: json: expected a JSON object, got list",
    ]


def cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_")}
    return subprocess.run(
        [INSTALLED_ENGAGE, "--config", str(tmp_path / "config.yaml"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        input=stdin,
        timeout=120,
    )


def test_cli_import_end_to_end(engine: Engine, db_url: str, tmp_path: Path):
    (tmp_path / "config.yaml").write_text(f"database_url: {json.dumps(db_url)}\n")
    lines = (
        ["id,email"]
        + [f"c{i},c{i}@example.com" for i in range(60)]
        + [f"x{i},bad-{i}@" for i in range(55)]
    )
    write(tmp_path / "file.csv", "\n".join(lines) + "\n")

    done = cli(tmp_path, "import", "customers", "file.csv", "--rejects", "rej.csv")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    # not a terminal: log lines (no progress bar), then the problems
    logged = [line for line in done.stderr.splitlines() if " INFO " in line]
    assert any("import_done" in line and "inserted=60" in line for line in logged), logged
    shown = [line for line in done.stderr.splitlines() if " INFO " not in line]
    assert shown[0].startswith("file.csv:62: email: not a valid address 'bad-0@'")
    assert len(shown) == 51 and shown[-1] == "... and 5 more (all in rej.csv)"
    assert done.stdout.startswith(
        "customers: 115 read, 60 imported (60 new, 0 updated), 0 unchanged, 55 rejected in "
    )
    assert len((tmp_path / "rej.csv").read_text().splitlines()) == 56
    assert len(rows(engine, Customer)) == 60

    again = cli(
        tmp_path,
        "import",
        "customers",
        "-",
        "--format",
        "csv",
        "--json",
        stdin="id,tier\nc1,gold\n",
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["updated"] == 1
    assert customer(engine, "c1")["tier"] == "gold"

    write(tmp_path / "nohead.csv", "email\na@example.com\n")
    for args, message in (
        (("customers", "missing.csv"), "error: missing.csv: no such file"),
        (("customers", "nohead.csv"), "error: nohead.csv:1: missing required column(s)"),
    ):
        failed = cli(tmp_path, "import", *args)
        assert failed.returncode == 1, failed
        assert failed.stderr.startswith(message)
        assert "Traceback" not in failed.stderr


@pytest.mark.parametrize("helper", [False, True], ids=["in-process", "helper-process"])
def test_phones_read_the_same_in_the_helper_process(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper: bool
):
    """Big customer files have their phones validated by a helper process
    (engage.ingest.phones); its answers are the in-process ones."""
    from engage.ingest import phones

    monkeypatch.setattr(phones, "HELPER_MIN_PHONES", 1 if helper else 10**9)
    started: list[object] = []
    real = phones.PhoneHelper
    monkeypatch.setattr(phones, "PhoneHelper", lambda: started.append(1) or real())
    path = write(
        tmp_path / "c.csv",
        "id,phone,country\n"
        "a,(415) 555-2671,\n"
        "b,555-12,US\n"
        "c,06 12 34 56 78,FR\n"
        "d,,FR\n"
        "e,+44 20 7946 0123,\n"
        "f,not a number,\n",
    )
    result = run(engine, "customers", path, batch_size=2, phone_helper=True)
    assert bool(started) is helper
    assert [str(w) for w in result.warnings] == [
        f"{path}:3: warning: phone: not a valid phone number '555-12' (region US from the"
        " country column); the customer is imported without it",
        f"{path}:7: warning: phone: not a phone number 'not a number': (1) The string supplied"
        " did not seem to be a phone number.; the customer is imported without it",
    ]
    assert {c["id"]: c["phone"] for c in rows(engine, Customer)} == {
        "a": "+14155552671",
        "b": None,
        "c": "+33612345678",
        "d": None,
        "e": "+442079460123",
        "f": None,
    }


def test_keys_repeated_across_batches_of_a_first_load(engine: Engine, tmp_path: Path):
    """A first load writes new rows without reading first (PostgreSQL) or
    with the indexes deferred (both): a key that comes back in a later batch
    still merges and counts as updated or unchanged."""
    customers = write(
        tmp_path / "c.csv",
        "id,tier,city\nk1,gold,Lyon\nk2,,\nk3,,\nk1,,Paris\nk2,,\n",  # k1 changed, k2 repeated
    )
    result = run(engine, "customers", customers, batch_size=2)
    assert (result.inserted, result.updated, result.unchanged) == (3, 1, 1)
    assert customer(engine, "k1")["tier"] == "gold"  # not given later: kept
    assert customer(engine, "k1")["attributes"] == {"city": "Paris"}
    interactions = write(
        tmp_path / "i.csv",
        "customer_id,kind,occurred_at,amount,external_id,channel\n"
        "k1,order,2026-02-01,10,e1,web\n"
        "k2,visit,2026-02-02,,e2,\n"
        "k3,visit,2026-02-03,,e3,\n"
        "k1,order,2026-02-01,,e1,\n"  # the same event again, nothing new: unchanged
        "k1,order,2026-02-01,,e1,app\n",  # more attributes: updated
    )
    result = run(engine, "interactions", interactions, batch_size=2)
    assert (result.inserted, result.updated, result.unchanged, result.rejected) == (3, 1, 1, 0)
    got = {r["external_id"]: r for r in rows(engine, Interaction)}
    assert got["e1"]["amount"] == Decimal("10.00")
    assert got["e1"]["attributes"] == {"channel": "app"}


def test_progress_after_every_batch_and_log_lines_without_a_terminal(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """The CLI's progress bar reads these (rows, bytes of the file, ETA); without
    a terminal the same states become periodic import_progress log lines."""
    from engage.ingest import ImportProgress, runner

    seed_customers(engine, tmp_path, "c1")
    body = "".join(f"c1,visit,2026-01-01T00:00:00Z,e{i}\n" for i in range(12_000))
    path = write(tmp_path / "big.csv", "customer_id,kind,occurred_at,external_id\n" + body)
    seen: list[ImportProgress] = []
    monkeypatch.setattr(runner, "LOG_EVERY", 0.0)  # a line after every batch
    with caplog.at_level("INFO", logger="engage"):
        result = run(engine, "interactions", path, progress=seen.append, batch_size=5_000)
    assert result.inserted == 12_000
    assert [p.rows for p in seen] == [5_000, 10_000, 12_000]
    assert all(p.bytes_total == os.path.getsize(path) for p in seen)
    assert [p.bytes_done for p in seen] == sorted(p.bytes_done for p in seen)
    assert seen[-1].fraction == 1.0 and seen[-1].eta == 0.0
    assert 0 < seen[0].fraction < 1 and seen[0].eta is not None and seen[0].eta > 0
    lines = [r for r in caplog.records if getattr(r, "event", None) == "import_progress"]
    assert [r.rows for r in lines] == [5_000, 10_000, 12_000]  # type: ignore[attr-defined]
    assert lines[-1].percent == 100.0  # type: ignore[attr-defined]
