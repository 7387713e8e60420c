"""Alembic environment: engage passes its engine in ``config.attributes``."""

from __future__ import annotations

from alembic import context

from engage.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("engage runs migrations online only: use `engage db upgrade`")
run_migrations_online()
