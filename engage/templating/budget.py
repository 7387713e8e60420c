"""Cheap bounds on what one render may do, checked on every message.

Templates are checked once when they are loaded or reloaded, in a child
process with a time and memory limit (``isolation.py``): a template that
loops forever or allocates gigabytes against the sample customer never
reaches the renderer. What that check cannot see is a template whose work
depends on a customer's data (``range(customer.orders)``, ``"x" *
points.balance``). A process per message is far too slow, so every render
carries these bounds instead, each costing next to nothing where it is not
used:

* ``range()``: at most ``RANGE_BUDGET`` numbers per render in total (Jinja's
  sandbox caps one call at 100,000, not a loop of calls: nested loops);
* ``*``, ``**``, ``+`` and ``%``: no string or list longer than ``MAX_TEXT``,
  no integer longer than ``MAX_INT_BITS`` (``10**10000000`` took seconds and
  ``'a'*10**8`` a hundred megabytes); the same for ``str.format``, the
  ``format``, ``center`` and ``indent`` filters and ``lipsum``;
* the output: a template that writes more than ``MAX_OUTPUT`` characters stops
  there (the configured caps on email and SMS size apply afterwards).

Breaking a bound raises ``BudgetExceeded``, which the renderer reports like
any template error: a ``render_error`` for that one message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from itertools import islice
from typing import Any

from jinja2.exceptions import SecurityError

RANGE_BUDGET = 1_000_000  # range() numbers per render, all calls together
MAX_TEXT = 1_000_000  # characters (or items) of one string or list an operator makes
MAX_INT_BITS = 16_384  # about 4,900 decimal digits; more than any shop needs
MAX_OUTPUT = 4_000_000  # characters one template may write
MAX_WIDTH = 10_000  # a field width in a format string or a filter argument

_WIDTH = re.compile(r"[1-9]\d{4,}")  # a width of 10,000 or more in a format spec


class BudgetExceeded(SecurityError):
    """A render tried to do more than a message can need (see the module doc)."""


class RenderBudget:
    """What is left of one render's budget (created per message)."""

    __slots__ = ("range_left",)

    def __init__(self) -> None:
        self.range_left = RANGE_BUDGET

    def take_range(self, n: int) -> None:
        self.range_left -= n
        if self.range_left < 0:
            raise BudgetExceeded(
                f"loops over more than {RANGE_BUDGET:,} range() numbers in one message"
            )


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be too large, before computing it."""
    if operator == "*":
        if _sized(left) and isinstance(right, int):
            n = len(left) * right
        elif _sized(right) and isinstance(left, int):
            n = len(right) * left
        elif isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise BudgetExceeded(f"a number larger than {MAX_INT_BITS:,} bits")
            return
        else:
            return
        if n > MAX_TEXT:
            raise BudgetExceeded(f"a text or list longer than {MAX_TEXT:,}")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if right * math.log2(abs(left)) > MAX_INT_BITS:
                raise BudgetExceeded(f"a number larger than {MAX_INT_BITS:,} bits")
    elif operator == "+":
        if _sized(left) and _sized(right) and len(left) + len(right) > MAX_TEXT:
            raise BudgetExceeded(f"a text or list longer than {MAX_TEXT:,}")
    elif operator == "%" and isinstance(left, str):
        check_format(left)


def check_format(spec: str) -> None:
    """A printf- or format-style string asking for a field 10,000 wide or more."""
    if _WIDTH.search(spec):
        raise BudgetExceeded(f"a format with a field width of {MAX_WIDTH:,} or more")


def check_width(width: Any) -> None:
    if isinstance(width, int) and width >= MAX_WIDTH:
        raise BudgetExceeded(f"a width of {MAX_WIDTH:,} or more")
    if isinstance(width, str) and len(width) >= MAX_WIDTH:
        raise BudgetExceeded(f"a width of {MAX_WIDTH:,} or more")


_BLOCK = 512  # chunks taken from a template at a time


def bounded_join(chunks: Iterable[str], limit: int = MAX_OUTPUT) -> str:
    """``"".join(chunks)``, stopping soon after the text passes ``limit``.

    Chunks are taken and measured a block at a time (``islice``, ``map``: C
    loops): a render of a few hundred chunks costs one block, about what the
    join itself costs. A block's chunks are small pieces of template text and
    bounded values, so overshooting the limit by one block is harmless."""
    it = iter(chunks)
    block = list(islice(it, _BLOCK))
    if len(block) < _BLOCK:
        return "".join(block)
    parts = block
    size = sum(map(len, block))
    while True:
        if size > limit:
            raise BudgetExceeded(f"writes more than {limit:,} characters")
        block = list(islice(it, _BLOCK))
        if not block:
            return "".join(parts)
        size += sum(map(len, block))
        parts += block
