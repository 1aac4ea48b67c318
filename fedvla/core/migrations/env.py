"""Alembic environment: the schema comes from fedvla.core.models, the URL from settings."""

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from fedvla.core import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from fedvla.core.config import get_settings
from fedvla.core.db import make_engine
from fedvla.core.migrate import migration_connection

target_metadata = SQLModel.metadata


def _database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    return url or get_settings().database_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        literal_binds=connection is None,
    )


if context.is_offline_mode():
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    else:
        engine = make_engine(_database_url())
        with migration_connection(engine) as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
        engine.dispose()
