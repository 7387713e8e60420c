"""Engines and sessions: one engine per URL, SQLite tuned for a daemon."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import SingletonThreadPool, StaticPool

from ..errors import ConfigError

_ENGINES: dict[str, Engine] = {}


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` use psycopg 3, which engage ships."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for ``url`` (SQLite gets WAL, foreign keys and a busy timeout)."""
    url = normalize_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"not a database URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite or postgresql"
        )
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def in_memory_sqlite(url: URL) -> bool:
    """An SQLite database that lives in this process only: ``sqlite://``,
    ``:memory:``, and the URI forms ``file::memory:`` and ``?mode=memory``."""
    if url.get_backend_name() != "sqlite":
        return False
    name = url.database or ""
    return (
        name in ("", ":memory:")
        or name.startswith("file::memory:")
        or url.query.get("mode") == "memory"
    )


def shared_across_threads(engine: Engine) -> bool:
    """Whether connections checked out in different threads reach the same
    database and may be used at once: not so for in-memory SQLite (a database
    per connection, a connection per thread; or, shared-cache, table locks
    that fail at once instead of waiting) nor for one shared connection."""
    if in_memory_sqlite(engine.url):
        return False
    return not isinstance(engine.pool, SingletonThreadPool | StaticPool)


def get_engine(url: str) -> Engine:
    """The shared engine for ``url`` in this process."""
    key = normalize_url(url)
    if key not in _ENGINES:
        _ENGINES[key] = make_engine(key)
    return _ENGINES[key]


def unusable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database itself cannot be used (it could not be
    connected to or opened, the connection broke, engage's tables are missing)
    rather than that one statement failed: no caller can work around that one
    campaign at a time."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError) and exc.statement is None:
        return True
    return _schema_problem(_first_line(exc).lower())


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    return lines[0] if lines else type(orig).__name__


def _schema_problem(low: str) -> bool:
    return (
        "no such table" in low
        or "no such column" in low
        or ("does not exist" in low and ("relation" in low or "column" in low))
    )


def explain_db_error(exc: BaseException, url: str | None) -> str:
    """One line saying what is wrong with the database behind ``url``, for a
    SQLAlchemy error that reached the edge (the CLI): it cannot be reached,
    opened or written, or it lacks engage's tables; the driver's own message
    otherwise. Never the SQL statement, never a password."""
    text = _first_line(exc)
    low = text.lower()
    parsed = None
    if url:
        try:
            parsed = make_url(url)  # as the user wrote it (postgres://, no +psycopg)
        except ArgumentError:
            parsed = None
    sqlite = parsed is not None and parsed.get_backend_name() == "sqlite"
    shown = (
        (parsed.database or "(in memory)")
        if sqlite and parsed is not None
        else parsed.render_as_string(hide_password=True)
        if parsed is not None
        else "the database"
    )
    if _schema_problem(low):
        return (
            f"the database {shown} lacks engage's tables or has an older schema ({text}): "
            "run `engage db upgrade`"
        )
    if sqlite:
        if "unable to open" in low:
            return (
                f"cannot open the SQLite database {shown}: {text} "
                "(does its folder exist, and may engage write in it?)"
            )
        if "readonly" in low or "read-only" in low:
            return (
                f"cannot write the SQLite database {shown}: it or its folder is read-only ({text})"
            )
        if "locked" in low:
            return f"the SQLite database {shown} is locked by another process ({text})"
        return f"SQLite database {shown}: {text}"
    if text.startswith("connection failed: "):
        text = text[len("connection failed: ") :]
    if "FATAL:" in text:
        text = text.split("FATAL:", 1)[1].strip()
    connecting = isinstance(exc, OperationalError) and getattr(exc, "statement", None) is None
    if connecting:
        return f"cannot connect to the database {shown}: {text}"
    return f"database error on {shown}: {text}"


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session inside one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
