"""Dispatch rate through the real SDKs to the fakes, vs a bare SDK call loop.

The fakes (``FakeSendGrid``, ``FakeTwilio``) run in a separate process so
their request handling does not share this process's GIL. The engage figure
is ``Dispatcher.run_once`` over planned messages of one ``bench-*`` campaign:
claim with a lease, load recipients, re-check consent and suppressions,
render from current data, send, record the outcome, with the default
configuration (so a backlog starts the helper process that prepares batches;
the first batches are prepared in-process while it starts, about a second).
The reference is the same number of threads (``dispatch.workers``) each
calling the SDK in a loop with one prebuilt request, nothing else.

10,000 messages per channel (fewer on small data sets), in three rounds: each
round runs engage and the bare loop back to back, engage first in the first
and third round and second in the second, and the figure is the round with
the median ratio. The machine's speed drifts from minute to minute
(see ``cpu_check``): a pair measured back to back sees the same machine, and
the median of three pairs is not one lucky or unlucky minute. At 5,000
messages the helper's start (its imports: 0.4 s of CPU) was a sixth of
engage's extra work; a backlog worth a helper is longer than that.
"""

from __future__ import annotations

import multiprocessing
import threading
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select

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
FROM_NUMBER = "+15005550006"


def _fakes_child(conn: Any) -> None:
    from engage.testing import FakeSendGrid, FakeTwilio

    with FakeSendGrid(api_key=SG_KEY) as sg, FakeTwilio(
        account_sid=TW_SID, auth_token=TW_TOKEN
    ) as tw:
        conn.send((sg.url, tw.url))
        conn.recv()  # until the parent says stop


def _plan(ctx: Context, channel: str, n: int) -> int:
    """``n`` planned messages of one campaign for customers reachable on ``channel``."""
    c = Customer.__table__
    if channel == "email":
        reachable = and_(c.c.email.is_not(None), c.c.email_opt_in.is_(True))
    else:
        reachable = and_(c.c.phone.is_not(None), c.c.sms_opt_in.is_(True))
    with ctx.engine.connect() as conn:
        ids = [
            r[0]
            for r in conn.execute(
                select(c.c.id, c.c.email if channel == "email" else c.c.phone)
                .where(reachable, c.c.created_at <= ctx.now)
                .order_by(c.c.id)
                .limit(n)
            )
        ]
    name = f"{PREFIX}dispatch-{channel}"
    rows = [
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
        return insert_ignore(conn, Message.__table__, rows, ["dedupe_key"])


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


def run(ctx: Context, messages: int = 10_000, rounds: int = 3) -> list[Result]:
    n = max(50, min(messages, ctx.customers // 4))
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    proc = spawn.Process(target=_fakes_child, args=(child,), daemon=True)
    proc.start()
    try:
        sg_url, tw_url = parent.recv()
        config = bench_config(
            ctx.workdir,
            channels={
                "email": "sendgrid",
                "sms": "twilio",
                "sendgrid": {"api_host": sg_url, "from_email": "shop@shop.test",
                             "rate_per_second": 1e6},
                "twilio": {"api_base": tw_url, "from_number": FROM_NUMBER,
                           "rate_per_second": 1e6},
            },
            dispatch={"batch_size": 200},
            secrets={"SENDGRID_API_KEY": SG_KEY, "TWILIO_ACCOUNT_SID": TW_SID,
                     "TWILIO_AUTH_TOKEN": TW_TOKEN},
        )
        results = []
        for channel, bare in (("email", _bare_sendgrid(sg_url)), ("sms", _bare_twilio(tw_url))):
            results.append(_one(ctx, config, channel, bare, n, rounds))
        return results
    finally:
        parent.send("stop")
        proc.join(timeout=10)


def _round(
    ctx: Context, config: Any, channel: str, bare: Any, n: int, engage_first: bool
) -> dict[str, Any]:
    """One engage run over ``n`` planned messages and the bare loop for as many,
    in the order given (rounds alternate it: neither side always gets the
    machine's first or second minute)."""
    name = f"{PREFIX}dispatch-{channel}"
    camp = campaign(name, {}, channels=[channel])
    bare_s = 0.0
    with scratch(ctx.engine):
        planned = _plan(ctx, channel, n)
        if not engage_first:
            bare_s = _threads(config.dispatch.workers, planned, bare)
        dispatcher = Dispatcher(
            ctx.engine, config, build_channels(config), Renderer(config), lambda: {name: camp}
        )
        try:
            seconds, stats = timed(lambda: dispatcher.run_once(ctx.now, campaign=name))
            helper_prepared = dispatcher.helper_prepared
        finally:
            dispatcher.close()
    sent = stats.outcomes.get("sent", 0)
    if engage_first:
        bare_s = _threads(config.dispatch.workers, planned, bare)
    return {
        "rate": sent / seconds,
        "bare_rate": planned / bare_s,
        "ratio": (sent / seconds) / (planned / bare_s),
        "planned": planned,
        "outcomes": dict(stats.outcomes),
        "prepared_by_helper": helper_prepared,
        "engage_first": engage_first,
    }


def _one(ctx: Context, config: Any, channel: str, bare: Any, n: int, rounds: int) -> Result:
    done = [_round(ctx, config, channel, bare, n, i % 2 == 0) for i in range(rounds)]
    median = sorted(done, key=lambda r: r["ratio"])[len(done) // 2]
    provider = "SendGrid" if channel == "email" else "Twilio"
    return Result(
        name=f"dispatch {provider} ({median['planned']:,} messages)",
        figure=round(median["rate"]),
        unit="msg/s",
        reference=round(median["bare_rate"]),
        reference_label=f"bare SDK loop, {config.dispatch.workers} threads, msg/s",
        target=f"median ratio of {rounds} >= {TARGET_RATIO}",
        passed=median["ratio"] >= TARGET_RATIO
        and all(r["outcomes"] == {"sent": r["planned"]} for r in done),
        ratio=round(median["ratio"], 2),
        details={
            "outcomes": median["outcomes"],
            "planned": median["planned"],
            "prepared_by_helper": median["prepared_by_helper"],
            "rounds": [
                {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                for r in done
            ],
        },
        load_avg=load_avg(),
    )
