"""The ingest API (``POST /v1/...``) against ``engage import`` of the same rows."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from engage.config import Config
from engage.db import Base, make_engine
from engage.db.models import (
    Customer,
    Interaction,
    PointsAllocation,
    PointsLot,
    PointsRedemption,
)
from engage.ingest import import_file
from engage.web import create_app
from engage.web.routes import ingest as ingest_routes

from .helpers import make_config
from .webtools import API_TOKEN, serving

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

CUSTOMERS = """id,email,phone,first_name,last_name,timezone,locale,tier,email_opt_in,sms_opt_in,created_at,country
c1,Ann@Example.COM,(202) 555-0123,Ann,Lee,Europe/Paris,fr_FR,gold,yes,1,2025-01-02T03:04:05+02:00,FR
c2,bob@example.com,,Bob,,,,silver,false,,2025-02-01,US
c3,not-an-email,,Cy,,,,,,,2025-03-01,
c4,dee@example.com,+44 20 7946 0958,Dee,,Mars/Base,,,,,2025-03-01,
,nobody@example.com,,,,,,,,,2025-03-01,
c5,eve@example.com,,Eve,,,,bronze,TRUE,no,2025-04-01,CA
c1,,,Annie,,,,,,,2025-01-02T01:04:05Z,
"""
INTERACTIONS = """customer_id,kind,occurred_at,amount,external_id,channel
c1,order,2026-01-05T10:00:00Z,19.99,o-1,web
c1,visit,2026-01-06,,,app
c2,order,2026-01-07T12:00:00+01:00,5,o-2,
c9,order,2026-01-07,5,o-3,
c2,order,yesterday,5,o-4,
c5,order,2026-01-08,-abc,o-5,
c5,support,2026-01-09,,s-1,phone
c1,order,2026-01-05T10:00:00Z,21.00,o-1,web
"""
POINTS = """customer_id,points,earned_at,expires_at,external_id
c1,100,2026-01-01,2026-07-01,p-1
c1,50,2026-02-01,2026-08-01,p-2
c1,-120,2026-03-01,,r-1
c2,10,2026-01-01,2025-01-01,p-3
c2,-500,2026-03-01,,r-2
c9,10,2026-01-01,2026-07-01,p-4
c5,25,2026-01-01,2027-01-01,
"""


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Config:
    return make_config(tmp_path, database_url=db_url, secrets={"ENGAGE_API_TOKEN": API_TOKEN})


@pytest.fixture
def client(config: Config, engine: Engine) -> Iterator[httpx.Client]:
    with serving(create_app(config)) as url, httpx.Client(base_url=url, headers=AUTH) as c:
        yield c


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def dump(engine: Engine) -> dict[str, Any]:
    """Every imported row, without surrogate ids and bookkeeping instants."""
    c, i, lot = Customer.__table__, Interaction.__table__, PointsLot.__table__
    r, a = PointsRedemption.__table__, PointsAllocation.__table__
    with engine.connect() as conn:
        return {
            "customers": [
                tuple(x)
                for x in conn.execute(
                    select(*(col for col in c.c if col.name != "updated_at")).order_by(c.c.id)
                )
            ],
            "interactions": [
                tuple(x)
                for x in conn.execute(
                    select(*(col for col in i.c if col.name not in ("id", "created_at"))).order_by(
                        i.c.external_id
                    )
                )
            ],
            "lots": [
                tuple(x)
                for x in conn.execute(
                    select(*(col for col in lot.c if col.name != "id")).order_by(lot.c.external_id)
                )
            ],
            "redemptions": [
                tuple(x)
                for x in conn.execute(
                    select(
                        r.c.external_id,
                        r.c.customer_id,
                        r.c.points,
                        r.c.redeemed_at,
                        lot.c.external_id,
                        a.c.points,
                    )
                    .join(a, a.c.redemption_id == r.c.id)
                    .join(lot, lot.c.id == a.c.lot_id)
                    .order_by(r.c.external_id, lot.c.external_id)
                )
            ],
        }


def test_api_items_match_the_same_rows_imported_from_csv(
    client: httpx.Client, engine: Engine, config: Config, tmp_path: Path
) -> None:
    reference = make_engine(f"sqlite:///{tmp_path / 'csv.db'}")
    Base.metadata.create_all(reference)
    expected_errors = {}
    for kind, text in (
        ("customers", CUSTOMERS),
        ("interactions", INTERACTIONS),
        ("points", POINTS),
    ):
        path = tmp_path / f"{kind}.csv"
        path.write_text(text)
        res = import_file(reference, config, kind, str(path))
        expected_errors[kind] = [(p.line - 2, p.field, p.message) for p in res.errors]
        assert res.errors, kind  # the fixture has bad rows of every kind

        r = client.post(f"/v1/{kind}", json=rows(text))
        assert r.status_code == 200, r.text
        body = r.json()
        got = [(e["index"], e["field"], e["message"]) for e in body["errors"]]
        assert got == expected_errors[kind]
        assert (
            body["received"],
            body["inserted"],
            body["updated"],
            body["unchanged"],
            body["rejected"],
        ) == (res.read, res.inserted, res.updated, res.unchanged, res.rejected)
    assert dump(engine) == dump(reference)
    reference.dispose()

    # Posting everything again is idempotent: nothing new, the same end state
    # (rows repeated inside a request still apply in order: the later one wins).
    before = dump(engine)
    for kind, text in (
        ("customers", CUSTOMERS),
        ("interactions", INTERACTIONS),
        ("points", POINTS),
    ):
        body = client.post(f"/v1/{kind}", json=rows(text)).json()
        assert body["inserted"] == 0, (kind, body)
    assert dump(engine) == before


def test_json_values_are_accepted_as_json(client: httpx.Client, engine: Engine) -> None:
    r = client.post(
        "/v1/customers",
        json=[
            {
                "id": "j1",
                "email": "j@example.com",
                "email_opt_in": True,
                "attributes": {"country": "DE", "vip": True},
            }
        ],
    )
    assert r.status_code == 200 and r.json()["inserted"] == 1
    r = client.post(
        "/v1/events",  # alias of /v1/interactions
        json=[
            {
                "customer_id": "j1",
                "kind": "order",
                "occurred_at": "2026-01-01T00:00:00Z",
                "amount": 12.5,
                "external_id": "e-1",
            }
        ],
    )
    assert r.status_code == 200 and r.json()["inserted"] == 1
    r = client.post(
        "/v1/points",
        json=[
            {
                "customer_id": "j1",
                "points": 10,
                "earned_at": "2026-01-01",
                "expires_at": "2027-01-01",
            }
        ],
    )
    assert r.status_code == 200 and r.json()["inserted"] == 1
    with engine.connect() as conn:
        attrs = conn.execute(select(Customer.attributes)).scalar_one()
    assert attrs == {"country": "DE", "vip": True}


def test_every_item_rejected_is_422_and_the_good_ones_are_kept_otherwise(
    client: httpx.Client, engine: Engine
) -> None:
    bad = client.post("/v1/customers", json=[{"id": ""}, "not an object", {"email": "x@y.z"}])
    assert bad.status_code == 422
    assert [(e["index"], e["field"]) for e in bad.json()["errors"]] == [
        (0, "id"),
        (1, "json"),
        (2, "id"),
    ]
    mixed = client.post("/v1/customers", json=[{"id": ""}, {"id": "ok"}])
    assert mixed.status_code == 200 and mixed.json()["inserted"] == 1
    with engine.connect() as conn:
        assert conn.execute(select(Customer.id)).scalars().all() == ["ok"]
    assert client.post("/v1/customers", json=[]).json()["received"] == 0


def test_bad_requests_are_4xx_json_and_change_nothing(
    client: httpx.Client, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="engage.web")
    item = {"id": "c1", "email": "secret.person@example.com"}
    cases = [
        (httpx.post(f"{client.base_url}/v1/customers", json=[item]), 401, "missing_token"),
        (
            httpx.post(
                f"{client.base_url}/v1/customers",
                json=[item],
                headers={"Authorization": "Bearer " + API_TOKEN[:-1] + "x"},
            ),
            401,
            "invalid_token",
        ),
        (
            httpx.post(
                f"{client.base_url}/v1/customers", json=[item], headers={"Authorization": API_TOKEN}
            ),
            401,
            "invalid_token",
        ),
        (
            client.post(
                "/v1/customers", content=b"[{]", headers={"Content-Type": "application/json"}
            ),
            400,
            "invalid_json",
        ),
        (client.post("/v1/customers", json={"id": "c1"}), 400, "invalid_json"),
        (
            client.post(
                "/v1/customers", content=json.dumps([item]), headers={"Content-Type": "text/csv"}
            ),
            415,
            "unsupported_media_type",
        ),
        (
            client.post("/v1/customers", json=[{"id": f"c{n}"} for n in range(1001)]),
            413,
            "too_many_items",
        ),
        (
            client.post("/v1/customers", json=[{"id": "c1", "note": "x" * 1_000_001}]),
            413,
            "too_large",
        ),
        (client.get("/v1/customers"), 405, "method_not_allowed"),
        (client.post("/v1/orders", json=[item]), 404, "not_found"),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (code, response.text)
        assert response.json()["error"] == code
        assert response.json()["message"]
    assert cases[0][0].headers["www-authenticate"].startswith("Bearer")
    with engine.connect() as conn:
        assert conn.execute(select(Customer.id)).all() == []
    # one log line per refusal, without the token, the body or the address
    refused = [r for r in caplog.records if getattr(r, "event", None) == "http_rejected"]
    assert len(refused) == len(cases)
    for record in refused:
        text = str(vars(record))
        assert API_TOKEN[:10] not in text and "secret.person" not in text


def test_disabled_without_api_token(tmp_path: Path, db_url: str, engine: Engine) -> None:
    config = make_config(tmp_path, database_url=db_url)
    with serving(create_app(config)) as url:
        for path in ingest_routes.PATHS:
            r = httpx.post(f"{url}{path}", json=[{"id": "c1"}], headers=AUTH)
            assert r.status_code == 404 and r.json()["error"] == "endpoint_disabled", path


def test_ingest_metrics(client: httpx.Client) -> None:
    client.post("/v1/customers", json=[{"id": "m1"}, {"id": ""}])
    text = client.get("/metrics").text
    assert 'engage_ingest_items_total{kind="customers",outcome="inserted"} 1.0' in text
    assert 'engage_ingest_items_total{kind="customers",outcome="rejected"} 1.0' in text


def test_deeply_nested_json_is_a_400(client: httpx.Client) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    r = client.post("/v1/customers", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
