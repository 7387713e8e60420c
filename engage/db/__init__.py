"""Database layer: models, engines, migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from .models import Base
from .session import get_engine, make_engine, transaction

MIGRATIONS = Path(__file__).parent / "migrations"

__all__ = [
    "Base",
    "current_revision",
    "get_engine",
    "head_revision",
    "make_engine",
    "transaction",
    "upgrade",
]


def _alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (``engage db upgrade``)."""
    command.upgrade(_alembic_config(engine), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
