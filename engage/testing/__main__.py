"""``python -m engage.testing``: run FakeSendGrid and FakeTwilio until Ctrl-C.

For trying campaigns by hand: point ``channels.sendgrid.api_host`` and
``channels.twilio.api_base`` at the printed URLs, export the printed secrets,
run ``engage send ...``, and watch one line per request arrive here.
"""

from __future__ import annotations

import argparse
import sys
import threading

from .fakes import FakeSendGrid, FakeTwilio, Recorded


def _describe(provider: str, rec: Recorded) -> str:
    body = rec.body if isinstance(rec.body, dict) else {}
    if provider == "sendgrid":
        to = ",".join(
            t.get("email", "?") for p in body.get("personalizations", []) for t in p.get("to", [])
        )
        what = f"to={to} subject={body.get('subject')!r}"
    else:
        what = f"to={body.get('To')} body={body.get('Body', '')[:60]!r}"
    return f"{provider:8s} {rec.method} {rec.path} -> {rec.status or 'hung up'} {what}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engage.testing", description=__doc__)
    parser.add_argument("--sendgrid-port", type=int, default=0)
    parser.add_argument("--twilio-port", type=int, default=0)
    parser.add_argument(
        "--latency", type=float, default=0.0, help="answer every request this many seconds late"
    )
    args = parser.parse_args(argv)
    out = sys.stdout
    with FakeSendGrid(port=args.sendgrid_port, latency=args.latency) as sg, FakeTwilio(
        port=args.twilio_port, latency=args.latency
    ) as tw:
        out.write(
            f"FakeSendGrid: {sg.url}\nFakeTwilio:   {tw.url}\n\n"
            f"  export ENGAGE_CHANNELS__SENDGRID__API_HOST={sg.url}\n"
            f"  export ENGAGE_CHANNELS__TWILIO__API_BASE={tw.url}\n"
            f"  export SENDGRID_API_KEY={sg.api_key}\n"
            f"  export TWILIO_ACCOUNT_SID={tw.account_sid} TWILIO_AUTH_TOKEN={tw.auth_token}\n\n"
        )
        out.flush()
        seen = {"sendgrid": 0, "twilio": 0}
        stop = threading.Event()
        try:
            while not stop.wait(0.2):
                for name, fake in (("sendgrid", sg), ("twilio", tw)):
                    new = fake.requests[seen[name] :]
                    seen[name] += len(new)
                    for rec in new:
                        out.write(_describe(name, rec))
                out.flush()
        except KeyboardInterrupt:
            out.write(f"\n{seen['sendgrid']} SendGrid and {seen['twilio']} Twilio requests\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
