"""``python -m benchmarks run --db URL [--scale S] [--json FILE] [--only NAME]``,
``python -m benchmarks generate ...`` (the data set; see generate.py) and
``python -m benchmarks crash --db URL ...`` (kill -9 under load; see crash.py)."""

from __future__ import annotations

import argparse
import sys

from . import crash, generate
from .runner import GROUPS, run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        return generate.main(argv[1:])
    if argv and argv[0] == "crash":
        return crash.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("generate", help="make the data set (python -m benchmarks generate -h)")
    sub.add_parser("crash", help="kill -9 daemons under load (python -m benchmarks crash -h)")
    r = sub.add_parser("run", help="measure every SPEC section 11 figure")
    r.add_argument("--db", required=True, help="database URL holding a generated data set")
    r.add_argument(
        "--scale",
        type=float,
        default=None,
        help="scale of the data set (default: customers / 1,000,000)",
    )
    r.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    r.add_argument(
        "--only", action="append", choices=sorted(GROUPS), help="run only this group (repeatable)"
    )
    r.add_argument("--now", help="the data set's present (default: derived from the data)")
    args = parser.parse_args(argv)
    return run(args.db, scale=args.scale, only=args.only, json_path=args.json, now=args.now)


if __name__ == "__main__":
    sys.exit(main())
