"""evaluation columns: the server's action error, the federated evaluation per round and client

``roundmetric`` gains the server evaluation's action error (in the data's units) and the
federated evaluation (the clients' own held-out episodes, averaged by samples); ``clientmetric``
gains each client's federated evaluation. Earlier rows have none (NULL, 0 samples).

Revision ID: b3f1e7a2c4d6
Revises: b3f1a9c27d41
Create Date: 2026-11-30 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3f1e7a2c4d6"
down_revision: str | None = "b3f1a9c27d41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROUND = ("eval_action_mse", "fed_eval_loss", "fed_eval_action_mse")
_CLIENT = ("eval_loss", "eval_action_mse")


def upgrade() -> None:
    with op.batch_alter_table("roundmetric") as table:
        for name in _ROUND:
            table.add_column(sa.Column(name, sa.Float(), nullable=True))
        table.add_column(
            sa.Column("fed_eval_samples", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("clientmetric") as table:
        for name in _CLIENT:
            table.add_column(sa.Column(name, sa.Float(), nullable=True))
        table.add_column(
            sa.Column("eval_samples", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("clientmetric") as table:
        for name in ("eval_samples", *reversed(_CLIENT)):
            table.drop_column(name)
    with op.batch_alter_table("roundmetric") as table:
        for name in ("fed_eval_samples", *reversed(_ROUND)):
            table.drop_column(name)
