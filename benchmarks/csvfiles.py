"""The benchmark data set as the CSV files a shop would hand to ``engage import``.

The rows come from the same seeded generator as the database data set
(``engage.ingest.sample``), customer by customer, and are written straight to
``customers.csv``, ``interactions.csv`` and ``points.csv`` without touching a
database: at scale 1 that is 1,000,000 customers, ~10,000,000 interactions and
~2,000,000 point lots. Points list every earned lot first, then every
redemption (as an export of a lots table followed by a redemptions table
would), so each redemption finds the lots it consumes earlier in the file.

``prefix`` replaces the first letter of every generated id (customers ``c…``,
interactions ``i…``, lots ``l…``, redemptions ``r…``): a second file set with
another prefix holds other customers and events, to import on top of the first.
"""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engage.ingest import sample
from engage.timeutil import ensure_utc

CUSTOMER_HEADER = (
    "id", "email", "phone", "first_name", "last_name", "timezone", "locale", "tier",
    "email_opt_in", "sms_opt_in", "created_at", "country", "source",
)  # fmt: skip
INTERACTION_HEADER = (
    "customer_id", "kind", "occurred_at", "amount", "score", "external_id", "items", "campaign",
    "topic",
)  # fmt: skip
POINTS_HEADER = ("customer_id", "points", "earned_at", "expires_at", "external_id")


@dataclass
class CsvFiles:
    directory: Path
    customers: int = 0
    interactions: int = 0
    lots: int = 0
    redemptions: int = 0

    @property
    def paths(self) -> dict[str, Path]:
        return {
            "customers": self.directory / "customers.csv",
            "interactions": self.directory / "interactions.csv",
            "points": self.directory / "points.csv",
        }

    def rows(self, kind: str) -> int:
        return {
            "customers": self.customers,
            "interactions": self.interactions,
            "points": self.lots + self.redemptions,
        }[kind]


def _instant(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def write_csv_files(
    directory: Path,
    *,
    customers: int,
    seed: int = 42,
    now: datetime,
    prefix: str = "",
    batch: int = 10_000,
) -> CsvFiles:
    """Write the three files for ``customers`` generated customers into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out = CsvFiles(directory)
    maker = sample._Maker(random.Random(seed), ensure_utc(now), 10.0, 2.0)
    names = {
        table: sample.COLUMNS[table]
        for table in ("customer", "interaction", "points_lot", "points_redemption")
    }

    def ident(value: str) -> str:
        return prefix + value[1:] if prefix else value

    redemptions_path = directory / "redemptions.tmp.csv"
    paths = out.paths
    with (
        paths["customers"].open("w", newline="", encoding="utf-8") as cf,
        paths["interactions"].open("w", newline="", encoding="utf-8") as inf,
        paths["points"].open("w", newline="", encoding="utf-8") as pf,
        redemptions_path.open("w", newline="", encoding="utf-8") as rf,
    ):
        cw, iw, pw, rw = (csv.writer(f, lineterminator="\n") for f in (cf, inf, pf, rf))
        cw.writerow(CUSTOMER_HEADER)
        iw.writerow(INTERACTION_HEADER)
        pw.writerow(POINTS_HEADER)
        for n in range(1, customers + 1):
            maker.customer(n)
            if maker.pending < batch and n != customers:
                continue
            customers_, interactions, lots, redemptions, _ = maker.take()
            for row in customers_:
                c = dict(zip(names["customer"], row, strict=True))
                attrs: dict[str, Any] = c["attributes"]
                cw.writerow((
                    ident(c["id"]), c["email"] or "", c["phone"] or "", c["first_name"] or "",
                    c["last_name"] or "", c["timezone"] or "", c["locale"] or "", c["tier"] or "",
                    _flag(c["email_opt_in"]), _flag(c["sms_opt_in"]), _instant(c["created_at"]),
                    attrs.get("country", ""), attrs.get("source", ""),
                ))  # fmt: skip
            for row in interactions:
                i = dict(zip(names["interaction"], row, strict=True))
                attrs = i["attributes"] or {}
                amount: Decimal | None = i["amount"]
                score = i.get("score")  # survey answers, when the generator makes them
                iw.writerow((
                    ident(i["customer_id"]), i["kind"], _instant(i["occurred_at"]),
                    "" if amount is None else str(amount), "" if score is None else score,
                    ident(i["external_id"]), attrs.get("items", ""), attrs.get("campaign", ""),
                    attrs.get("topic", ""),
                ))  # fmt: skip
            for row in lots:
                lot = dict(zip(names["points_lot"], row, strict=True))
                pw.writerow((
                    ident(lot["customer_id"]), lot["points"], _instant(lot["earned_at"]),
                    _instant(lot["expires_at"]), ident(lot["external_id"]),
                ))  # fmt: skip
            for row in redemptions:
                r = dict(zip(names["points_redemption"], row, strict=True))
                rw.writerow((
                    ident(r["customer_id"]), -r["points"], _instant(r["redeemed_at"]), "",
                    ident(r["external_id"]),
                ))  # fmt: skip
            out.customers += len(customers_)
            out.interactions += len(interactions)
            out.lots += len(lots)
            out.redemptions += len(redemptions)
    with (
        paths["points"].open("a", encoding="utf-8") as pf,
        redemptions_path.open(encoding="utf-8") as rf,
    ):
        for line in rf:
            pf.write(line)
    redemptions_path.unlink()
    return out


def _flag(value: bool) -> str:
    return "true" if value else "false"
