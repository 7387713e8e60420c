"""Dispatch through the real SDKs to the fakes: against a bare SDK loop, and
with the provider's latency.

The fakes (``FakeSendGrid``, ``FakeTwilio``) run in a separate process so
their request handling does not share this process's GIL; they can be told to
answer every request after a delay. The engage figure is
``Dispatcher.run_once`` over planned messages of one ``bench-*`` campaign:
claim, load recipients, re-check consent, suppressions and the send window,
render from current data, start, send, record, with the default
configuration except for the providers' URLs and rate limits (lifted, except
where the rate limit is what is measured).

Send windows are checked at the moment of sending, on the real clock, so the
messages go to customers whose local window is open now (with an hour to
spare).

Groups:

* ``dispatch`` (SPEC §11): emails and SMS with the fakes answering at once,
  beside a bare SDK call loop with a prebuilt request on 8 threads, in three
  rounds (engage and the bare loop back to back, engage first in the first and
  third round and second in the second); the figure is the round
  with the median ratio. Target: ≥ 0.70.
* ``dispatch-latency``: emails/s and SMS/s with the fakes answering after
  100 ms beside the rate at once, in three rounds (at once first in the first
  and third, 100 ms first in the second); the figure is the round with the
  median ratio (latency hidden: ≥ 90%, and ≥ 1,000 emails/s from one
  process); a configured rate limit as the bottleneck (≥ 90% of it);
  and on PostgreSQL 1, 2 and 3 worker processes at 100 ms.

``ENGAGE_BENCH_DISPATCH_MESSAGES`` sets the messages per figure (default
10,000, at most a quarter of the customers).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, select

from engage.config import Config
from engage.db.bulk import insert_ignore
from engage.db.models import Customer, Message
from engage.delivery.channels import build_channels
from engage.delivery.dispatch import Dispatcher
from engage.templating import Renderer

from .common import (
    PREFIX,
    SG_KEY,
    TW_SID,
    TW_TOKEN,
    Context,
    Result,
    bench_config,
    campaign,
    load_avg,
    scratch,
    timed,
)

TARGET_RATIO = 0.70
LATENCY = 0.1
HIDDEN = 0.90  # rate at LATENCY / rate at once
ONE_PROCESS = 1000.0  # emails/s at LATENCY from one process
RATE_LIMIT = 500.0
FROM_NUMBER = "+15005550006"


def _messages(ctx: Context) -> int:
    wanted = int(os.environ.get("ENGAGE_BENCH_DISPATCH_MESSAGES", "10000"))
    return max(50, min(wanted, ctx.customers // 4))


# -- the fakes, in their own process ------------------------------------------------------
def _fakes_child(conn: Any) -> None:
    from engage.testing import FakeSendGrid, FakeTwilio

    with (
        FakeSendGrid(api_key=SG_KEY) as sg,
        FakeTwilio(account_sid=TW_SID, auth_token=TW_TOKEN) as tw,
    ):
        conn.send((sg.url, tw.url))
        while (order := conn.recv()) != "stop":
            sg.latency = tw.latency = float(order)  # answer every request this late
            sg.clear()  # nobody reads the log here: a growing one slows the fakes
            tw.clear()
            conn.send("ok")


class Fakes:
    def __enter__(self) -> Fakes:
        spawn = multiprocessing.get_context("spawn")
        self._conn, child = spawn.Pipe()
        self._proc = spawn.Process(target=_fakes_child, args=(child,), daemon=True)
        self._proc.start()
        self.sendgrid, self.twilio = self._conn.recv()
        return self

    def latency(self, seconds: float) -> None:
        self._conn.send(seconds)
        assert self._conn.recv() == "ok"

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._proc.join(timeout=10)


def _config(ctx: Context, fakes: Fakes, rate: float = 1e6) -> Config:
    return bench_config(
        ctx.workdir,
        channels={
            "email": "sendgrid",
            "sms": "twilio",
            "sendgrid": {
                "api_host": fakes.sendgrid,
                "from_email": "shop@shop.test",
                "rate_per_second": rate,
            },
            "twilio": {
                "api_base": fakes.twilio,
                "from_number": FROM_NUMBER,
                "rate_per_second": rate,
            },
        },
        secrets={
            "SENDGRID_API_KEY": SG_KEY,
            "TWILIO_ACCOUNT_SID": TW_SID,
            "TWILIO_AUTH_TOKEN": TW_TOKEN,
        },
    )


# -- the messages -------------------------------------------------------------------------
def _open_now(zone: str, channel: str, config: Config, at: datetime) -> bool:
    """The customer's window is open at ``at`` and stays open for an hour."""
    window = config.window_for(channel)
    try:
        local = at.astimezone(ZoneInfo(zone))
    except (KeyError, ValueError):
        return False
    later = local + timedelta(hours=1)
    return (
        window.start <= local.time() < window.end
        and later.date() == local.date()
        and later.time() < window.end
    )


def _plan(ctx: Context, config: Config, channel: str, n: int) -> int:
    """``n`` planned messages of one campaign for customers reachable on
    ``channel`` whose send window is open now."""
    c = Customer.__table__
    if channel == "email":
        reachable = and_(c.c.email.is_not(None), c.c.email_opt_in.is_(True))
    else:
        reachable = and_(c.c.phone.is_not(None), c.c.sms_opt_in.is_(True))
    now = datetime.now(UTC)
    ids: list[str] = []
    with ctx.engine.connect() as conn:
        result = conn.execute(
            select(c.c.id, c.c.timezone)
            .where(reachable, c.c.created_at <= ctx.now)
            .order_by(c.c.id)
            .execution_options(yield_per=5000)
        )
        try:
            for cid, zone in result:
                if _open_now(zone or config.timezone, channel, config, now):
                    ids.append(cid)
                    if len(ids) == n:
                        break
        finally:
            result.close()
    name = f"{PREFIX}dispatch-{channel}"
    rows_ = [
        {
            "dedupe_key": f"{name}|{cid}",
            "campaign": name,
            "customer_id": cid,
            "channel": channel,
            "address": None,
            "template": "winback",
            "priority": 50,
            "counts_toward_cap": False,
            "status": "planned",
            "planned_at": ctx.now - timedelta(minutes=1),
            "send_after": ctx.now - timedelta(minutes=1),
            "attempts": 0,
            "updated_at": ctx.now,
        }
        for cid in ids
    ]
    with ctx.engine.begin() as conn:
        return insert_ignore(conn, Message.__table__, rows_, ["dedupe_key"])


def _dispatch(ctx: Context, config: Config, channel: str) -> tuple[float, Any]:
    """One ``run_once`` over the planned messages of the channel's campaign."""
    name = f"{PREFIX}dispatch-{channel}"
    camp = campaign(name, {}, channels=[channel])
    dispatcher = Dispatcher(
        ctx.engine, config, build_channels(config), Renderer(config), lambda: {name: camp}
    )
    try:
        return timed(lambda: dispatcher.run_once(ctx.now, campaign=name))
    finally:
        dispatcher.close()
        for ch in dispatcher.channels.values():
            ch.close()


def _rate(ctx: Context, config: Config, channel: str, n: int) -> dict[str, Any]:
    with scratch(ctx.engine):
        planned = _plan(ctx, config, channel, n)
        seconds, stats = _dispatch(ctx, config, channel)
    sent = stats.outcomes.get("sent", 0)
    return {
        "rate": sent / seconds,
        "seconds": round(seconds, 3),
        "planned": planned,
        "outcomes": dict(stats.outcomes),
    }


# -- the bare SDK loops (the reference at zero latency) -----------------------------------
def _threads(workers: int, total: int, call: Any) -> float:
    """``total`` calls of ``call()`` spread over ``workers`` threads; seconds."""
    counter = iter(range(total))
    lock = threading.Lock()

    def loop() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            call()

    def all_threads() -> None:
        threads = [threading.Thread(target=loop) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    seconds, _ = timed(all_threads)
    return seconds


def _bare_sendgrid(url: str) -> Any:
    from sendgrid import SendGridAPIClient

    local = threading.local()
    payload = {
        "personalizations": [{"to": [{"email": "someone@example.com"}]}],
        "from": {"email": "shop@shop.test"},
        "subject": "We miss you",
        "content": [
            {"type": "text/plain", "value": "Hello\n" * 200},
            {"type": "text/html", "value": "<p>Hello</p>\n" * 200},
        ],
        "custom_args": {"engage_message_id": "1"},
        "categories": ["engage", "bench"],
    }

    def call() -> None:
        if not hasattr(local, "client"):
            local.client = SendGridAPIClient(SG_KEY, host=url)
        local.client.client.mail.send.post(request_body=payload, timeout=10)

    return call


def _bare_twilio(url: str) -> Any:
    from twilio.rest import Client

    from engage.delivery.channels.twilio import RedirectingHttpClient

    local = threading.local()

    def call() -> None:
        if not hasattr(local, "client"):
            local.client = Client(TW_SID, TW_TOKEN, http_client=RedirectingHttpClient(url, 10))
            local.client.edge = local.client.region = None
        local.client.api.v2010.account.messages.create(
            to="+15555550123", from_=FROM_NUMBER, body="We miss you! Reply STOP to opt out"
        )

    return call


BARE_THREADS = 8


def run(ctx: Context, rounds: int = 3) -> list[Result]:
    """The ``dispatch`` group: the ratio to a bare SDK loop, fakes answering at once."""
    n = _messages(ctx)
    with Fakes() as fakes:
        config = _config(ctx, fakes)
        results = []
        for channel, bare in (
            ("email", _bare_sendgrid(fakes.sendgrid)),
            ("sms", _bare_twilio(fakes.twilio)),
        ):
            done = []
            for i in range(rounds):
                # Rounds alternate which side goes first: neither always gets
                # the machine's first or second minute.
                engage_first = i % 2 == 0
                bare_s = 0.0 if engage_first else _threads(BARE_THREADS, n, bare)
                got = _rate(ctx, config, channel, n)
                if engage_first:
                    bare_s = _threads(BARE_THREADS, got["planned"], bare)
                got["bare_rate"] = (got["planned"] if engage_first else n) / bare_s
                got["ratio"] = got["rate"] / got["bare_rate"]
                got["engage_first"] = engage_first
                done.append(got)
            median = sorted(done, key=lambda r: r["ratio"])[len(done) // 2]
            provider = "SendGrid" if channel == "email" else "Twilio"
            results.append(
                Result(
                    name=f"dispatch {provider} ({median['planned']:,} messages)",
                    figure=round(median["rate"]),
                    unit="msg/s",
                    reference=round(median["bare_rate"]),
                    reference_label=f"bare SDK loop, {BARE_THREADS} threads, msg/s",
                    target=f"median ratio of {rounds} >= {TARGET_RATIO}",
                    passed=median["ratio"] >= TARGET_RATIO
                    and all(r["outcomes"] == {"sent": r["planned"]} for r in done),
                    ratio=round(median["ratio"], 2),
                    details={
                        "outcomes": median["outcomes"],
                        "planned": median["planned"],
                        "workers": config.dispatch.workers,
                        "rounds": [
                            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                            for r in done
                        ],
                    },
                    load_avg=load_avg(),
                )
            )
        return results


def run_latency(ctx: Context, rounds: int = 3) -> list[Result]:
    """The ``dispatch-latency`` group (see the module doc)."""
    n = _messages(ctx)
    results = []
    with Fakes() as fakes:
        config = _config(ctx, fakes)
        for channel in ("email", "sms"):
            done = []
            for i in range(rounds):
                # As in ``run``: rounds alternate which latency goes first, and
                # the figure is the round with the median ratio.
                got: dict[float, dict[str, Any]] = {}
                for latency in (0, LATENCY) if i % 2 == 0 else (LATENCY, 0):
                    fakes.latency(latency)
                    got[latency] = _rate(ctx, config, channel, n)
                done.append((got[LATENCY]["rate"] / got[0]["rate"], got[0], got[LATENCY]))
            ratio, at_once, late = sorted(done, key=lambda r: r[0])[len(done) // 2]
            ok = ratio >= HIDDEN and all(_all_sent(a) and _all_sent(b) for _, a, b in done)
            target = f"median ratio of {rounds} >= {HIDDEN:.0%} of the rate at once"
            if channel == "email":
                ok = ok and late["rate"] >= ONE_PROCESS
                target += f", >= {ONE_PROCESS:,.0f}/s"
            results.append(
                Result(
                    name=f"dispatch {channel}, provider answers in {LATENCY * 1000:.0f} ms "
                    f"({late['planned']:,} messages)",
                    figure=round(late["rate"]),
                    unit="msg/s",
                    reference=round(at_once["rate"]),
                    reference_label="the same, provider answers at once, msg/s",
                    target=target,
                    passed=ok,
                    ratio=round(ratio, 2),
                    details={
                        "at_once": at_once,
                        "late": late,
                        "workers": config.dispatch.workers,
                        "rounds": [
                            {
                                "first": "at once" if i % 2 == 0 else "late",
                                "ratio": round(r, 3),
                                "at_once": round(a["rate"]),
                                "late": round(b["rate"]),
                            }
                            for i, (r, a, b) in enumerate(done)
                        ],
                    },
                    load_avg=load_avg(),
                )
            )
        # A rate limit that is the bottleneck: about five seconds' worth of messages.
        limited = _config(ctx, fakes, rate=RATE_LIMIT)
        got = _rate(ctx, limited, "email", min(n, int(RATE_LIMIT * 5)))
        results.append(
            Result(
                name=f"dispatch email, rate limit {RATE_LIMIT:,.0f}/s, provider in "
                f"{LATENCY * 1000:.0f} ms ({got['planned']:,} messages)",
                figure=round(got["rate"]),
                unit="msg/s",
                reference=RATE_LIMIT,
                reference_label="channels.sendgrid.rate_per_second",
                target=f">= {HIDDEN:.0%} of the limit, never above it",
                passed=HIDDEN * RATE_LIMIT <= got["rate"] <= RATE_LIMIT * 1.05 and _all_sent(got),
                ratio=round(got["rate"] / RATE_LIMIT, 2),
                details=got,
                load_avg=load_avg(),
            )
        )
        if ctx.engine.dialect.name == "postgresql":
            results += _workers(ctx, config, n)
    return results


def _all_sent(got: dict[str, Any]) -> bool:
    return got["outcomes"] == {"sent": got["planned"]}


# -- several worker processes (PostgreSQL) ------------------------------------------------
def _worker(
    db_url: str, config: Config, name: str, due_by: datetime, barrier: Any, out: Any
) -> None:
    from engage.db import make_engine

    engine = make_engine(db_url)
    camp = campaign(name, {}, channels=["email"])
    dispatcher = Dispatcher(
        engine, config, build_channels(config), Renderer(config), lambda: {name: camp}
    )
    barrier.wait()
    started = time.time()
    stats = dispatcher.run_once(due_by, campaign=name)
    out.put((stats.outcomes.get("sent", 0), started, time.time(), dict(stats.outcomes)))
    dispatcher.close()
    engine.dispose()


def _workers(ctx: Context, config: Config, n: int) -> list[Result]:
    spawn = multiprocessing.get_context("spawn")
    name = f"{PREFIX}dispatch-email"
    rates: dict[int, float] = {}
    results = []
    for k in (1, 2, 3):
        with scratch(ctx.engine):
            planned = _plan(ctx, config, "email", n)
            barrier, out = spawn.Barrier(k), spawn.Queue()
            procs = [
                spawn.Process(
                    target=_worker, args=(ctx.db_url, config, name, ctx.now, barrier, out)
                )
                for _ in range(k)
            ]
            for p in procs:
                p.start()
            done = [out.get(timeout=600) for _ in procs]
            for p in procs:
                p.join(timeout=60)
        sent = sum(d[0] for d in done)
        seconds = max(d[2] for d in done) - min(d[1] for d in done)
        rates[k] = sent / seconds
        results.append(
            Result(
                name=f"dispatch email, {k} PostgreSQL worker process(es), provider in "
                f"{LATENCY * 1000:.0f} ms ({planned:,} messages)",
                figure=round(rates[k]),
                unit="msg/s",
                reference=round(rates[1]),
                reference_label="one worker process, msg/s",
                target="informational (each process: msg/s in details)",
                passed=None if sent == planned else False,
                ratio=round(rates[k] / rates[1], 2),
                details={
                    "planned": planned,
                    "sent": sent,
                    "seconds": round(seconds, 3),
                    "per_process": [round(d[0] / (d[2] - d[1])) for d in done],
                    # a dict: dataclasses.asdict would rebuild a Counter from its items
                    "outcomes": dict(sum((Counter(d[3]) for d in done), Counter())),
                },
                load_avg=load_avg(),
            )
        )
    return results
