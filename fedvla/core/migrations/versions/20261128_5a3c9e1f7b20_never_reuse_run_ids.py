"""ids of runs and experiments are never reused; each run's files get a key of their own

SQLite reuses the largest rowid of a table after it is deleted unless the table is declared
AUTOINCREMENT, which only a rebuild can add (PostgreSQL's sequences never go back). A run's files
move from ``runs/<id>`` to ``runs/<storage_key>``; existing runs keep their folder (key = id).

Revision ID: 5a3c9e1f7b20
Revises: d8c61578dc65
Create Date: 2026-11-28 06:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "5a3c9e1f7b20"
down_revision: str | None = "d8c61578dc65"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NEVER_REUSED = ("experiment", "run")


def _rebuild(autoincrement: bool) -> None:
    """Copies each table into one declared with or without AUTOINCREMENT, rows included.

    fedvla.core.migrate turns SQLite's foreign keys off while migrating: with them on, dropping the
    old table would cascade-delete every row that refers to it.
    """
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _NEVER_REUSED:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("storage_key", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True)
        )
    op.execute("UPDATE run SET storage_key = CAST(id AS VARCHAR(40))")
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.alter_column("storage_key", nullable=False)
        batch_op.create_index(batch_op.f("ix_run_storage_key"), ["storage_key"], unique=True)
    _rebuild(autoincrement=True)


def downgrade() -> None:
    _rebuild(autoincrement=False)
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_storage_key"))
        batch_op.drop_column("storage_key")
