"""notes on runs: a free-text ``run.notes`` that operators and admins edit

Revision ID: b3f1a9c27d41
Revises: 7e41c2d9a853
Create Date: 2026-11-29 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3f1a9c27d41"
down_revision: str | None = "7e41c2d9a853"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("notes", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.drop_column("notes")
