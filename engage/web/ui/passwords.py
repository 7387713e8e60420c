"""Make an ``ENGAGE_UI_USERS`` entry: ``python -m engage.web.ui.passwords NAME``.

Asks for the password twice (without echo) and prints ``NAME:scrypt$...``.
Join several entries with commas (or newlines) in ``ENGAGE_UI_USERS``.
"""

from __future__ import annotations

import getpass
import sys

from .auth import hash_password


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].strip() or ":" in args[0] or "," in args[0]:
        sys.stderr.write("usage: python -m engage.web.ui.passwords NAME  (no ':' or ',')\n")
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("the two passwords differ\n")
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        sys.stderr.write("use at least 8 characters\n")
        return 1
    sys.stdout.write(f"{args[0].strip()}:{hash_password(password)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
