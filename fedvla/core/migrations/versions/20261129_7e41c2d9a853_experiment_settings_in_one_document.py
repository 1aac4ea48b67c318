"""an experiment's settings are one JSON document (ExperimentConfig), not a column each

``experiment.config`` holds every setting; ``mode`` stays a column as well, since queries filter
on it. Each row's values move into the document unchanged, and back on downgrade.

Revision ID: 7e41c2d9a853
Revises: cd7b50709bc2
Create Date: 2026-11-29 09:00:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.engine import Connection

revision: str = "7e41c2d9a853"
down_revision: str | None = "cd7b50709bc2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = sqlmodel.sql.sqltypes.AutoString
_SETTINGS: dict[str, Any] = {
    "policy": _TEXT(length=500),
    "strategy": sa.Enum(
        "fedavg", "fedprox", "fedadam", name="strategy", native_enum=False, length=20
    ),
    "proximal_mu": sa.Float(),
    "server_learning_rate": sa.Float(),
    "num_rounds": sa.Integer(),
    "fraction_train": sa.Float(),
    "min_clients": sa.Integer(),
    "local_steps": sa.Integer(),
    "batch_size": sa.Integer(),
    "learning_rate": sa.Float(),
    "seed": sa.Integer(),
    "eval_every": sa.Integer(),
    "eval_batches": sa.Integer(),
    "checkpoint_every": sa.Integer(),
    "keep_checkpoints": sa.Integer(),
    "mode": sa.Enum("simulation", "deployment", name="mode", native_enum=False, length=20),
    "client_datasets": sa.JSON(),
    "partition": sa.JSON(),
    "eval_datasets": sa.JSON(),
    "normalization": _TEXT(length=20),
    "transport_dtype": _TEXT(length=20),
    "client_num_cpus": sa.Float(),
    "client_num_gpus": sa.Float(),
    "device": _TEXT(length=10),
}
"""The settings columns of revision cd7b50709bc2, with their types, in ExperimentConfig's order."""

_MOVED = [name for name in _SETTINGS if name != "mode"]
_NULLABLE = {"partition"}

_experiment = sa.table(
    "experiment",
    sa.column("id", sa.Integer()),
    sa.column("config", sa.JSON()),
    *(sa.column(name, type_) for name, type_ in _SETTINGS.items()),
)


def _sqlite_sequence(bind: Connection) -> int | None:
    """The largest id SQLite's AUTOINCREMENT handed out for experiments: a table rebuild resets
    it to the largest id still present, and would hand a deleted experiment's id out again."""
    if bind.dialect.name != "sqlite":
        return None
    found = bind.execute(sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'experiment'"))
    return found.scalar()


def _restore_sqlite_sequence(bind: Connection, seq: int | None) -> None:
    if seq is None:
        return
    current = _sqlite_sequence(bind) or 0
    bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'experiment'"))
    bind.execute(
        sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('experiment', :seq)"),
        {"seq": max(seq, current)},
    )


def _rebuilt_experiment() -> Any:
    """A batch that rebuilds the table on SQLite keeping it AUTOINCREMENT (fedvla.core.migrate
    turns SQLite's foreign keys off meanwhile, so runs and site links keep their rows)."""
    return op.batch_alter_table(
        "experiment", recreate="auto", table_kwargs={"sqlite_autoincrement": True}
    )


def upgrade() -> None:
    bind = op.get_bind()
    seq = _sqlite_sequence(bind)
    with op.batch_alter_table("experiment") as batch_op:
        batch_op.add_column(sa.Column("config", sa.JSON(), nullable=True))
    columns = [_experiment.c[name] for name in _SETTINGS]
    for row in bind.execute(sa.select(_experiment.c.id, *columns)).mappings().all():
        settings = {name: row[name] for name in _SETTINGS}
        bind.execute(
            _experiment.update().where(_experiment.c.id == row["id"]).values(config=settings)
        )
    with _rebuilt_experiment() as batch_op:
        batch_op.alter_column("config", existing_type=sa.JSON(), nullable=False)
        for name in _MOVED:
            batch_op.drop_column(name)
    _restore_sqlite_sequence(bind, seq)


def downgrade() -> None:
    bind = op.get_bind()
    seq = _sqlite_sequence(bind)
    with op.batch_alter_table("experiment") as batch_op:
        for name in _MOVED:
            batch_op.add_column(sa.Column(name, _SETTINGS[name], nullable=True))
    rows = bind.execute(sa.select(_experiment.c.id, _experiment.c.config)).mappings().all()
    for row in rows:
        values = {name: row["config"][name] for name in _MOVED}
        bind.execute(_experiment.update().where(_experiment.c.id == row["id"]).values(**values))
    with _rebuilt_experiment() as batch_op:
        for name in _MOVED:
            if name not in _NULLABLE:
                batch_op.alter_column(name, existing_type=_SETTINGS[name], nullable=False)
        batch_op.drop_column("config")
    _restore_sqlite_sequence(bind, seq)
