"""The HTTP side (SPEC §11): signed SendGrid events/s and ingested interactions/s.

The server is the real ``engage serve`` (``python -m engage serve --workers
2``) in its own processes; this process is the load generator: a few
threads, each with a keep-alive connection, posting prepared requests (the
signing and JSON encoding happen before the clock starts). Each figure is
the items of all requests over the wall time from the first request to the
last answer.

* **SendGrid**: batches of 1,000 events, as SendGrid's Event Webhook posts
  them, signed with an ECDSA P-256 key made here, for ``sent`` messages of a
  ``bench-http`` campaign: per message ``processed`` and ``delivered`` (2% a
  hard ``bounce`` instead), 40% an ``open``, 10% a ``click``, 0.5% an
  ``unsubscribe``, 0.1% a ``spamreport``. Every event changes something.
* **Ingest**: ``POST /v1/interactions`` with 1,000 new orders of existing
  customers per request.

The reference for both is the same requests against a bare Starlette app
under the same uvicorn settings that only does the protocol work (checks
the signature or the bearer token, decodes the JSON, answers 200): the
fastest a Python server receives this traffic on this machine, so the
ratio says what share of that engage keeps while doing the database work.
Each pair runs engage first in one round and the bare server first in the
other; the figure is the better round of engage and of the reference.

Everything written is removed afterwards (messages of ``bench-*``
campaigns, their suppressions, webhook event ids and interactions with
``bench`` ids) and the consent flags the unsubscribes cleared are restored.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, or_, select, text, update

from engage.db import upgrade
from engage.db.bulk import insert_ignore
from engage.db.models import Customer, Interaction, Message, Suppression, WebhookEvent

from .common import PREFIX, Context, Result, load_avg

CAMPAIGN = f"{PREFIX}http"
EVENT_PREFIX = "bench-"
BATCH = 1000
WORKERS = 2
CLIENT_THREADS = 4
MESSAGES_AT_SCALE_1 = 30_000  # about 2.6 events each: ~80,000 events
INTERACTIONS_AT_SCALE_1 = 100_000  # (fewer on small data sets)
TARGETS = {"postgresql": (5_000, 10_000)}  # events/s, interactions/s (SPEC §11)
API_TOKEN = "benchmark-api-token-0123456789"


def run(ctx: Context) -> list[Result]:
    upgrade(ctx.engine)  # a data set made before the webhook_event table
    signer = _Signer()
    n_messages = max(200, min(MESSAGES_AT_SCALE_1, ctx.customers // 3))
    n_items = max(1000, min(INTERACTIONS_AT_SCALE_1, ctx.customers * 2))
    env = {
        "ENGAGE_DATABASE_URL": ctx.db_url,
        "SENDGRID_WEBHOOK_PUBLIC_KEY": signer.public_key,
        "ENGAGE_API_TOKEN": API_TOKEN,
    }
    config_file = ctx.workdir / "http-config.yaml"
    config_file.write_text("timezone: UTC\npublic_url: https://engage.shop.test\n")
    results = []
    try:
        _cleanup(ctx)
        rounds = []
        for engage_first in (True, False):
            rounds.append(_round(ctx, env, config_file, signer, n_messages, n_items, engage_first))
        results.append(_result(ctx, "SendGrid webhook", "events/s", 0, rounds))
        results.append(_result(ctx, "ingest API", "interactions/s", 1, rounds))
    finally:
        _cleanup(ctx)
    return results


def _result(ctx: Context, label: str, unit: str, i: int, rounds: list[dict[str, Any]]) -> Result:
    name = ("sendgrid", "ingest")[i]
    engage = max(r[name]["rate"] for r in rounds)
    bare = max(r[f"{name}_bare"]["rate"] for r in rounds)
    target = TARGETS.get(ctx.engine.dialect.name)
    goal = target[i] if target else None
    items = rounds[0][name]["items"]
    return Result(
        name=f"http {label} ({items:,} {unit.split('/')[0]}, {WORKERS} workers)",
        figure=round(engage),
        unit=unit,
        reference=round(bare),
        reference_label=f"bare Starlette app, {unit}",
        target=f">= {goal:,} {unit}" if goal else "informational (SQLite)",
        passed=(engage >= goal) if goal else None,
        ratio=round(engage / bare, 2),
        details={
            "batch": BATCH,
            "client_threads": CLIENT_THREADS,
            "workers": WORKERS,
            "rounds": [
                {"engage_first": r["engage_first"], "engage": r[name], "bare": r[f"{name}_bare"]}
                for r in rounds
            ],
        },
        load_avg=load_avg(),
    )


def _round(
    ctx: Context,
    env: dict[str, str],
    config_file: Path,
    signer: _Signer,
    n_messages: int,
    n_items: int,
    engage_first: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {"engage_first": engage_first}
    ids = _messages(ctx, n_messages)
    customers = _customers(ctx, n_items)
    events = _events(ids, ctx)
    ingest_bodies = [
        _interactions(customers, start, min(BATCH, n_items - start), ctx)
        for start in range(0, n_items, BATCH)
    ]
    order = ["engage", "bare"] if engage_first else ["bare", "engage"]
    for which in order:
        suffix = "" if which == "engage" else "_bare"
        with _server(which, config_file, env, ctx.workdir) as url:
            # signed now: the timestamp must be recent when it arrives
            sg_bodies = [signer.sign(events[i : i + BATCH]) for i in range(0, len(events), BATCH)]
            out["sendgrid" + suffix] = _load(url, "/webhooks/sendgrid", sg_bodies, len(events))
            out["ingest" + suffix] = _load(url, "/v1/interactions", ingest_bodies, n_items)
    out["sendgrid"]["states"] = _states(ctx)  # what engage wrote: checked by the tests
    out["ingest"]["stored"] = _stored(ctx)
    _cleanup(ctx)
    return out


# -- the data ---------------------------------------------------------------------------


def _messages(ctx: Context, n: int) -> list[tuple[int, str, str]]:
    """``n`` sent emails of the bench campaign: (message id, customer id, address)."""
    c = Customer.__table__
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(c.c.id, c.c.email)
            .where(c.c.email.is_not(None), c.c.email_opt_in.is_(True))
            .order_by(c.c.id)
            .limit(n)
        ).all()
    sent = ctx.now - timedelta(hours=1)
    values = [
        {
            "dedupe_key": f"{CAMPAIGN}|{cid}",
            "campaign": CAMPAIGN,
            "customer_id": cid,
            "channel": "email",
            "address": email,
            "template": "winback",
            "priority": 50,
            "counts_toward_cap": False,
            "status": "sent",
            "planned_at": sent,
            "send_after": sent,
            "attempts": 1,
            "provider": "sendgrid",
            "sent_at": sent,
            "updated_at": sent,
        }
        for cid, email in rows
    ]
    with ctx.engine.begin() as conn:
        insert_ignore(conn, Message.__table__, values, ["dedupe_key"])
        m = Message.__table__
        found = conn.execute(
            select(m.c.id, m.c.customer_id, m.c.address).where(m.c.campaign == CAMPAIGN)
        ).all()
    return [(int(i), str(cid), str(addr)) for i, cid, addr in found]


def _customers(ctx: Context, n: int) -> list[str]:
    c = Customer.__table__
    with ctx.engine.connect() as conn:
        return list(conn.execute(select(c.c.id).order_by(c.c.id).limit(n)).scalars())


def _events(messages: list[tuple[int, str, str]], ctx: Context) -> list[dict[str, Any]]:
    rng = random.Random(7)
    base = int((ctx.now - timedelta(minutes=50)).timestamp())
    events: list[dict[str, Any]] = []

    def add(kind: str, mid: int, email: str, **kw: Any) -> None:
        n = len(events)
        events.append(
            {
                "email": email,
                "timestamp": base + n // 100,
                "event": kind,
                "sg_event_id": f"{EVENT_PREFIX}{n:08d}",
                "sg_message_id": f"bench{mid}.filterdrecv-1234-5678-1",
                "smtp-id": f"<bench{mid}@shop.test>",
                "category": ["engage", CAMPAIGN],
                "engage_message_id": str(mid),
                **kw,
            }
        )

    for mid, _, email in messages:
        add("processed", mid, email)
        if rng.random() < 0.02:
            add(
                "bounce",
                mid,
                email,
                type="bounce",
                status="5.1.1",
                reason="550 5.1.1 The email account that you tried to reach does not exist",
            )
            continue
        add("delivered", mid, email, response="250 OK")
        if rng.random() < 0.4:
            add("open", mid, email, useragent="Mozilla/5.0", ip="203.0.113.7")
        if rng.random() < 0.1:
            add(
                "click",
                mid,
                email,
                url="https://shop.test/?utm_source=engage",
                useragent="Mozilla/5.0",
                ip="203.0.113.7",
            )
        r = rng.random()
        if r < 0.005:
            add("unsubscribe", mid, email)
        elif r < 0.006:
            add("spamreport", mid, email)
    rng.shuffle(events)  # batches mix kinds and messages, as SendGrid's do
    return events


def _interactions(
    customers: list[str], start: int, n: int, ctx: Context
) -> tuple[bytes, dict[str, str]]:
    day = ctx.now - timedelta(days=1)
    items = [
        {
            "customer_id": customers[(start + i) % len(customers)],
            "kind": "order",
            "occurred_at": (day + timedelta(seconds=start + i)).isoformat(),
            "amount": f"{(start + i) % 200 + 0.99:.2f}",
            "external_id": f"{EVENT_PREFIX}order-{start + i}",
            "channel": "web",
        }
        for i in range(n)
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"}
    return json.dumps(items).encode(), headers


class _Signer:
    def __init__(self) -> None:
        import base64

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self._key = ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def sign(self, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        import base64

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        body = json.dumps(events).encode()
        ts = str(int(time.time()))
        signature = self._key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return body, {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }


# -- the server and the load ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(which: str, config_file: Path, env: dict[str, str], workdir: Path) -> Iterator[str]:
    port = _free_port()
    if which == "engage":
        cmd = [
            sys.executable,
            "-m",
            "engage",
            "--config",
            str(config_file),
            "serve",
            "--workers",
            str(WORKERS),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.http_bare:create_app",
            "--factory",
            "--workers",
            str(WORKERS),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ENGAGE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    full_env.update(env)
    root = Path(__file__).resolve().parent.parent
    log = (workdir / f"http-{which}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_up(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                # every worker is up when a few connections in a row are answered
                for _ in range(WORKERS * 4):
                    httpx.get(f"{url}/healthz", timeout=5)
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not start within 60 s")


def _load(
    url: str, path: str, bodies: list[tuple[bytes, dict[str, str]]], items: int
) -> dict[str, Any]:
    """POST every body from ``CLIENT_THREADS`` threads; items per second."""
    queue = iter(range(len(bodies)))
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                body, headers = bodies[i]
                try:
                    r = client.post(path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(CLIENT_THREADS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return {
        "items": items,
        "requests": len(bodies),
        "seconds": round(seconds, 3),
        "rate": items / seconds,
        "statuses": statuses,
        "errors": errors[:5],
    }


# -- checks and cleanup -----------------------------------------------------------------


def _states(ctx: Context) -> dict[str, int]:
    m = Message.__table__
    with ctx.engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(m.c.status, text("count(*)"))
                .where(m.c.campaign == CAMPAIGN)
                .group_by(m.c.status)
            ).all()
        )
    return {str(k): int(v) for k, v in counts.items()}


def _stored(ctx: Context) -> int:
    i = Interaction.__table__
    with ctx.engine.connect() as conn:
        return int(
            conn.execute(
                select(text("count(*)"))
                .select_from(i)
                .where(i.c.external_id.startswith(f"{EVENT_PREFIX}order-"))
            ).scalar_one()
        )


def _cleanup(ctx: Context) -> None:
    """Remove what a run wrote and give back the consent the unsubscribes took."""
    m, s, w, i, c = (
        Message.__table__,
        Suppression.__table__,
        WebhookEvent.__table__,
        Interaction.__table__,
        Customer.__table__,
    )
    with ctx.engine.begin() as conn:
        revoked = list(
            conn.execute(
                select(s.c.customer_id).where(
                    s.c.campaign == CAMPAIGN, s.c.reason.in_(["unsubscribe", "spam_report"])
                )
            ).scalars()
        )
        for chunk in range(0, len(revoked), 500):
            conn.execute(
                update(c).where(c.c.id.in_(revoked[chunk : chunk + 500])).values(email_opt_in=True)
            )
        conn.execute(delete(s).where(s.c.campaign == CAMPAIGN))
        conn.execute(delete(w).where(w.c.event_id.startswith(EVENT_PREFIX)))
        # (a sequential scan of the interactions: LIKE uses no index in most collations)
        deleted = conn.execute(
            delete(i).where(
                or_(
                    i.c.external_id.startswith(f"sendgrid:{EVENT_PREFIX}"),
                    i.c.external_id.startswith(f"{EVENT_PREFIX}order-"),
                )
            )
        ).rowcount
        deleted += conn.execute(delete(m).where(m.c.campaign == CAMPAIGN)).rowcount
    if ctx.engine.dialect.name == "postgresql" and deleted:
        with ctx.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) message, interaction, webhook_event, suppression"))
