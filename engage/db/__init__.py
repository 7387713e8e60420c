"""Database layer (the floor of the flow): models, engines, bulk writes, migrations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from .models import Base
from .session import get_engine, make_engine, transaction

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic is imported where it is used: it costs a fifth of a second at start-up,
# and only ``engage db`` and the schema checks need it.
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
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (``engage db upgrade``)."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
