"""server-side web sessions; tokens and audit rows outlive their site

Revision ID: cd7b50709bc2
Revises: 5a3c9e1f7b20
Create Date: 2026-11-28 06:15:32.793664
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "cd7b50709bc2"
down_revision: str | None = "5a3c9e1f7b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_FK_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


def _site_foreign_key(table: str, ondelete: str) -> None:
    """Replaces ``table.site_id``'s foreign key to site. The initial schema left it unnamed:
    PostgreSQL named it ``<table>_site_id_fkey``; on SQLite a naming convention finds it."""
    if op.get_bind().dialect.name == "sqlite":
        name = f"fk_{table}_site_id_site"
        batch = op.batch_alter_table(table, naming_convention=_SQLITE_FK_NAMES, recreate="always")
    else:
        name = f"{table}_site_id_fkey"
        batch = op.batch_alter_table(table)
    with batch as batch_op:
        batch_op.drop_constraint(name, type_="foreignkey")
        batch_op.create_foreign_key(name, "site", ["site_id"], ["id"], ondelete=ondelete)


def upgrade() -> None:
    # Before websession refers to apitoken: SQLite rebuilds apitoken to change its foreign key.
    _site_foreign_key("apitoken", "SET NULL")
    with op.batch_alter_table("siteaudit") as batch_op:
        batch_op.add_column(
            sa.Column(
                "site_name",
                sqlmodel.sql.sqltypes.AutoString(length=100),
                server_default="",
                nullable=False,
            )
        )
        batch_op.alter_column("site_id", existing_type=sa.INTEGER(), nullable=True)
    op.execute(
        "UPDATE siteaudit SET site_name = "
        "COALESCE((SELECT name FROM site WHERE site.id = siteaudit.site_id), '')"
    )
    _site_foreign_key("siteaudit", "SET NULL")

    op.create_table(
        "websession",
        sa.Column("key_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["apitoken.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_hash"),
    )
    with op.batch_alter_table("websession") as batch_op:
        batch_op.create_index(batch_op.f("ix_websession_token_id"), ["token_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("websession") as batch_op:
        batch_op.drop_index(batch_op.f("ix_websession_token_id"))
    op.drop_table("websession")

    op.execute("DELETE FROM siteaudit WHERE site_id IS NULL")
    _site_foreign_key("siteaudit", "CASCADE")
    with op.batch_alter_table("siteaudit") as batch_op:
        batch_op.alter_column("site_id", existing_type=sa.INTEGER(), nullable=False)
        batch_op.drop_column("site_name")
    _site_foreign_key("apitoken", "CASCADE")
