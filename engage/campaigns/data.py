"""Audiences checked against the customers in the database (``engage validate``).

A ``where`` key that no customer has, or a ``tiers`` value that is no
customer's tier, selects nobody without any error: most often a typo
(``vipp``, ``platnum``) or a type (``"3"`` where the imported values are
numbers). These are warnings, with the closest names that do exist. The
checks need customers to compare with: without a database, or with an empty
one, there is nothing to say.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, exists, func, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from ..config import Config
from ..db import make_engine
from ..db.models import Customer
from ..db.session import in_memory_sqlite
from ..errors import Problem
from ..yamlutil import YamlSyntaxError, load_yaml_file, locate
from .audience import _where_attributes
from .loader import display_path
from .schema import Campaign


def data_problems(config: Config, campaigns: Sequence[Campaign]) -> list[Problem]:
    """Warnings for ``where`` keys and ``tiers`` values that match no customer."""
    wanted = [c for c in campaigns if c.audience.tiers or c.audience.where]
    if not wanted:
        return []
    try:
        engine = make_engine(config.db_url)
    except Exception:  # noqa: BLE001 - no usable database: nothing to check against
        return []
    try:
        if _missing_sqlite_file(engine.url) or in_memory_sqlite(engine.url):
            return []
        with engine.connect() as conn:
            if not inspect(conn).has_table("customer"):
                return []
            if conn.execute(select(Customer.__table__.c.id).limit(1)).first() is None:
                return []
            return _Checker(conn).problems(wanted)
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()


def _missing_sqlite_file(url: Any) -> bool:
    from pathlib import Path

    return (
        url.get_backend_name() == "sqlite"
        and bool(url.database)
        and not (Path(url.database).exists())
    )


class _Checker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        c = Customer.__table__.c
        self.tiers = {t for (t,) in conn.execute(select(c.tier).distinct()) if t is not None}
        self.keys: set[str] | None = None  # every attribute name, read when needed

    def problems(self, campaigns: Sequence[Campaign]) -> list[Problem]:
        out: list[Problem] = []
        for campaign in campaigns:
            shown = display_path(campaign.path)
            try:
                _, where = load_yaml_file(campaign.path, shown)
            except (OSError, YamlSyntaxError):
                where = {}
            found: list[tuple[tuple[Any, ...], bool, str, str]] = []  # loc, key?, field, why
            audience = campaign.audience
            for i, tier in enumerate(audience.tiers or ()):
                if tier not in self.tiers:
                    at: tuple[Any, ...] = ("audience", "tiers", i)
                    found.append((at, False, f"audience.tiers[{i}]", self._no_tier(tier)))
            for name, value in (audience.where or {}).items():
                loc: tuple[Any, ...] = ("audience", "where", name)
                field = f"audience.where.{name}"
                if not self._has_key(name):
                    found.append((loc, True, field, self._no_key(name)))
                elif not self._matches(name, value):
                    found.append((loc, False, field, self._no_value(name, value)))
            for loc, key, field, why in found:
                line, col = locate(where, loc, key=key) or (None, None)
                out.append(Problem(shown, line, col, field, why, severity="warning"))
        return out

    def _no_tier(self, tier: str) -> str:
        message = f"no customer has the tier {tier!r}"
        close = difflib.get_close_matches(tier, sorted(self.tiers), n=1)
        if close:
            return f"{message}: did you mean {close[0]!r}?"
        known = ", ".join(sorted(self.tiers)[:10])
        return f"{message} (the tiers in use: {known})" if known else f"{message} (none has a tier)"

    def _has_key(self, name: str) -> bool:
        attrs = Customer.__table__.c.attributes
        has: Any
        if self.conn.dialect.name == "postgresql":
            has = text("(customer.attributes::jsonb) ? :key").bindparams(key=name)
        else:
            has = func.json_type(attrs, _json_path(name)).is_not(None)
        customers = exists().select_from(Customer.__table__).where(has)
        return bool(self.conn.execute(select(customers)).scalar())

    def _no_key(self, name: str) -> str:
        if self.keys is None:
            if self.conn.dialect.name == "postgresql":
                sql = "SELECT DISTINCT jsonb_object_keys(attributes::jsonb) FROM customer"
            else:
                sql = "SELECT DISTINCT j.key FROM customer, json_each(customer.attributes) AS j"
            self.keys = {str(k) for k in self.conn.exec_driver_sql(sql).scalars()}
        message = f"no customer has the attribute {name!r}, so this matches nobody"
        close = difflib.get_close_matches(name, sorted(self.keys), n=1)
        if close:
            return f"{message}: did you mean {close[0]!r}?"
        return message

    def _matches(self, name: str, value: Any) -> bool:
        clause = and_(*_where_attributes({name: value}))
        customers = exists().select_from(Customer.__table__).where(clause)
        return bool(self.conn.execute(select(customers)).scalar())

    def _no_value(self, name: str, value: Any) -> str:
        attrs = Customer.__table__.c.attributes
        kind: Any
        if self.conn.dialect.name == "postgresql":
            member = text("customer.attributes::jsonb -> :key").bindparams(key=name)
            kind = func.jsonb_typeof(member)
        else:
            kind = func.json_type(attrs, _json_path(name))
        stored = sorted(
            {_TYPE_NAMES.get(str(t), str(t)) for (t,) in self.conn.execute(
                select(kind).select_from(Customer.__table__).distinct())
             if t is not None and str(t) != "null"}
        )  # fmt: skip
        wanted = sorted({_TYPE_NAMES[type(v).__name__] for v in _values(value)})
        message = f"no customer matches {name}: {value!r}"
        if stored and set(stored) != set(wanted):
            message += (
                f" ({' and '.join(wanted)} in the campaign; the customers' {name} is"
                f" {' and '.join(stored)}: write it without or with quotes to match)"
            )
        return message


def _values(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _json_path(name: str) -> str:
    """The JSON path of a top-level key, as SQLAlchemy writes it on SQLite."""
    return f'$."{name}"'


_TYPE_NAMES = {
    "str": "text",
    "int": "a number",
    "float": "a number",
    "bool": "true/false",
    "text": "text",
    "string": "text",
    "integer": "a number",
    "real": "a number",
    "number": "a number",
    "true": "true/false",
    "false": "true/false",
    "boolean": "true/false",
    "object": "an object",
    "array": "a list",
}
