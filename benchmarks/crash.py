"""``python -m benchmarks crash --db postgresql://...``: at most once under kill -9.

Several ``engage run`` daemons share one PostgreSQL database and send a
campaign through a real ``FakeSendGrid`` answering after ``--latency``
seconds; every 0.5–2.5 s one of them, at random, is killed with SIGKILL and
restarted at once, for ``--seconds``. The campaign runs every minute and the
run starts 20 s before a minute turns, so it spans two occurrences (the
second must message nobody again). Then the daemons are left to settle
(leases of the killed ones run out) and are stopped.

What it reports, from the database and from what the fake received:

* **duplicates**: messages the provider received more than once, and
  customers it received more than one message for (must both be 0);
* **lost**: messages not ``sent`` and not ``unknown`` at the end, and
  customers of the audience without a message (must both be 0);
* **unknown**: how many, and how many of them the provider never received a
  request for. A message is ``unknown`` only if it was started (handed to a
  request) when its worker died, so every ``unknown`` must have reached the
  provider or have been on its way (killed mid-request: the fake saw no
  complete request). The figure beside it is the number of kills.

Each run gets its own schema in the database (dropped at the end unless
``--keep``) and its own temporary project folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from sqlalchemy import func, insert, select, text
from sqlalchemy.pool import NullPool

from engage.config import Dispatch
from engage.db import make_engine, upgrade
from engage.db.models import Customer, Message
from engage.testing import FakeSendGrid

ROOT = Path(__file__).resolve().parent.parent
KEY = "SG.crash-harness"
SECRET = "crash-harness-secret-key-0123456789"


def _schema_url(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


def _project(folder: Path, fake_url: str, args: argparse.Namespace) -> None:
    (folder / "campaigns").mkdir(parents=True)
    shutil.copytree(ROOT / "templates", folder / "templates")
    settings = {
        "timezone": "UTC",
        "public_url": "https://engage.shop.test",
        "shop": {"name": "Crash Shop", "postal_address": "1 Test Street, Springfield"},
        "send_windows": {"email": {"start": "00:00", "end": "24:00"}},
        "channels": {
            "email": "sendgrid",
            "sendgrid": {"api_host": fake_url, "rate_per_second": args.rate, "timeout": 10},
        },
        "dispatch": {"poll_interval": "1s", "lease": args.lease, "shutdown_grace": "10s"},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    (folder / "campaigns" / "crash.yaml").write_text(
        "name: crash\n"
        'schedule: {cron: "* * * * *", timezone: UTC}\n'
        "audience: {}\nchannels: [email]\ntemplate: winback\n"
        "exempt_from_frequency_cap: true\n"
    )


def _customers(engine: Any, n: int) -> None:
    created = datetime.now(UTC) - timedelta(days=400)
    rows = [
        {
            "id": f"c{i:05d}",
            "email": f"c{i:05d}@example.com",
            "timezone": "UTC",
            "email_opt_in": True,
            "sms_opt_in": False,
            "attributes": {},
            "created_at": created,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        for start in range(0, n, 1000):
            conn.execute(insert(Customer), rows[start : start + 1000])


class Workers:
    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder, self.env = folder, env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"worker-{self.started}.log", "wb")  # noqa: SIM115
        self.started += 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "engage", "run", "--log-format", "json"],
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        return proc


def _states(engine: Any) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(Message.status, func.count()).group_by(Message.status))
        return Counter({s: int(n) for s, n in rows})


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    schema = f"crash_{uuid.uuid4().hex[:10]}"
    admin = make_engine(args.db, poolclass=NullPool)
    if admin.dialect.name != "postgresql":
        raise SystemExit("the crash harness runs several daemons: it needs PostgreSQL")
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _schema_url(args.db, schema)
    engine = make_engine(url)
    folder = Path(tempfile.mkdtemp(prefix="engage-crash-"))
    workers: Workers | None = None
    try:
        upgrade(engine)
        _customers(engine, args.messages)
        with FakeSendGrid(api_key=KEY, latency=args.latency) as fake:
            _project(folder, fake.url, args)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGAGE_", "SENDGRID"))}
            env.update(
                ENGAGE_DATABASE_URL=url,
                ENGAGE_SECRET_KEY=SECRET,
                SENDGRID_API_KEY=KEY,
                ENGAGE_DISPATCH__WORKERS=str(args.in_flight),
            )
            # Start 20 s before a minute turns: the run spans two occurrences.
            wait = (40 - datetime.now(UTC).second) % 60
            time.sleep(wait)
            workers = Workers(folder, env)
            procs = workers.procs
            procs += [workers.start() for _ in range(args.workers)]
            started = time.monotonic()
            kills: list[dict[str, Any]] = []
            while time.monotonic() - started < args.seconds:
                time.sleep(rng.uniform(0.5, 2.5))
                victim = rng.randrange(len(procs))
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait(timeout=10)
                kills.append(
                    {
                        "at": round(time.monotonic() - started, 2),
                        "requests": len(fake.requests),
                        "states": dict(_states(engine)),
                    }
                )
                procs[victim] = workers.start()
            # Settle: the killed workers' leases run out, the living send the rest.
            deadline = time.monotonic() + args.settle
            while time.monotonic() < deadline:
                left = _states(engine)
                if not (left["planned"] + left["retry"] + left["claimed"] + left["sending"]):
                    break
                time.sleep(0.5)
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            time.sleep(max(args.latency * 2, 0.5))  # the fake's last answers
            requests = [r for r in fake.requests if isinstance(r.body, dict)]
        per_message = Counter(r.body["custom_args"]["engage_message_id"] for r in requests)
        per_customer = Counter(r.body["personalizations"][0]["to"][0]["email"] for r in requests)
        with engine.connect() as conn:
            rows = conn.execute(select(Message.id, Message.status, Message.customer_id)).all()
            runs = conn.execute(text("SELECT scheduled_at, state FROM campaign_run")).all()
        states = Counter(status for _, status, _ in rows)
        unknown = [mid for mid, status, _ in rows if status == "unknown"]
        messaged = {cid for _, status, cid in rows if status in ("sent", "unknown")}
        report = {
            "messages": args.messages,
            "workers": args.workers,
            "in_flight_per_worker": args.in_flight,
            "latency_s": args.latency,
            "rate_per_worker": args.rate,
            "lease": args.lease,
            "seconds": args.seconds,
            "kills": len(kills),
            "occurrences": [(str(at), state) for at, state in sorted(runs)],
            "states": dict(states),
            "provider_requests": len(requests),
            "duplicate_messages": sum(1 for n in per_message.values() if n > 1),
            "customers_messaged_twice": sum(1 for n in per_customer.values() if n > 1),
            "lost_messages": sum(n for s, n in states.items() if s not in ("sent", "unknown")),
            "customers_without_a_message": args.messages - len(messaged),
            "unknown": len(unknown),
            "unknown_reached_provider": sum(1 for mid in unknown if str(mid) in per_message),
            "unknown_without_a_request": sum(1 for mid in unknown if str(mid) not in per_message),
            "sent_without_a_request": sum(
                1 for mid, status, _ in rows if status == "sent" and str(mid) not in per_message
            ),
            "kill_log": kills,
        }
        report["passed"] = (
            report["duplicate_messages"] == 0
            and report["customers_messaged_twice"] == 0
            and report["lost_messages"] == 0
            and report["customers_without_a_message"] == 0
            and report["sent_without_a_request"] == 0
        )
        return report
    finally:
        if workers is not None:
            for proc in workers.procs:
                if proc.poll() is None:
                    proc.kill()
        engine.dispose()
        if not args.keep:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"kept schema {schema} and {folder}", file=sys.stderr)
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks crash", description=__doc__)
    parser.add_argument("--db", required=True, help="a PostgreSQL URL (a schema is created)")
    parser.add_argument("--messages", type=int, default=1500, help="customers, one message each")
    parser.add_argument("--workers", type=int, default=3, help="engage run processes")
    parser.add_argument(
        "--in-flight", type=int, default=Dispatch().workers, help="dispatch.workers of each"
    )
    parser.add_argument("--latency", type=float, default=0.15, help="the fake's answer delay, s")
    parser.add_argument("--rate", type=float, default=1e6, help="rate_per_second per process")
    parser.add_argument("--lease", default="20s", help="dispatch.lease")
    parser.add_argument("--seconds", type=float, default=45, help="how long to kill workers")
    parser.add_argument("--settle", type=float, default=90, help="max wait afterwards, s")
    parser.add_argument("--seed", default="crash")
    parser.add_argument("--json", metavar="PATH", help="write the report here too")
    parser.add_argument("--keep", action="store_true", help="keep the schema and the folder")
    args = parser.parse_args(argv)
    report = run(args)
    shown = {k: v for k, v in report.items() if k != "kill_log"}
    print(json.dumps(shown, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
