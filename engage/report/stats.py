"""The arithmetic behind the figures: rates from counts, money from cents, and
the confidence interval of a lift. Pure functions, no database.

Rates are computed exactly from integer counts (``Fraction``) and rounded
once, half to even, so the same counts give the same printed figure
everywhere. Money travels as integer cents and becomes ``Decimal`` at the
end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal distribution
CENT = Decimal("0.01")


def percent(numerator: int, denominator: int, places: int = 2) -> float | None:
    """``numerator / denominator`` in percent, rounded half to even; None for 0/0."""
    if denominator == 0:
        return None
    return float(round(Fraction(100 * numerator, denominator), places))


def ratio(numerator: int, denominator: int, places: int = 2) -> float | None:
    if denominator == 0:
        return None
    return float(round(Fraction(numerator, denominator), places))


def money(cents: int | Fraction) -> Decimal:
    """Cents (possibly fractional) as a Decimal amount, rounded half to even to the cent."""
    exact = Fraction(cents) / 100
    return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(
        CENT, rounding=ROUND_HALF_EVEN
    )


def money_per(cents: int, count: int) -> Decimal | None:
    """An average amount (``cents / count``) to the cent; None when count is 0."""
    return None if count == 0 else money(Fraction(cents, count))


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (as fractions, not percent)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Difference:
    """p1 - p2 with its 95% interval (fractions, not percent)."""

    estimate: float
    low: float
    high: float


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> Difference:
    """The difference of two proportions x1/n1 - x2/n2 with Newcombe's hybrid
    score interval (his method 10, 1998), built from the two Wilson intervals:

    low  = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)
    high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)
    """
    if n1 == 0 or n2 == 0:
        raise ValueError("both groups need members")
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return Difference(
        d,
        d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
        d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2),
    )


def points(value: float, places: int = 2) -> float:
    """A fraction as rounded percentage points (0.0123 -> 1.23)."""
    return round(value * 100, places) + 0.0  # + 0.0: no "-0.0"
