"""The schema is Alembic's: it applies to an empty database and matches fedvla.core.models
exactly."""

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, Table, insert, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlmodel import Session, SQLModel, col, select

from fedvla.core.db import make_engine
from fedvla.core.experiment_config import ExperimentConfig
from fedvla.core.migrate import alembic_config, migration_connection, upgrade_database
from fedvla.core.models import Experiment, Run, utcnow
from tests.conftest import POSTGRES_URL, _postgres_admin_engine, _unavailable


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"fedvla_empty_{uuid.uuid4().hex[:10]}"
    try:
        admin = _postgres_admin_engine()
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        _unavailable("PostgreSQL", error)
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_from_empty_reaches_head_with_every_table(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)

    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(empty_database_url)).get_current_head()
    assert current == head
    assert set(SQLModel.metadata.tables) <= tables


def test_autogenerate_finds_no_drift(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)

    engine = make_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_upgrade_twice_is_a_no_op(empty_database_url: str) -> None:
    upgrade_database(empty_database_url)
    upgrade_database(empty_database_url)


def _insert_runs_at_initial_schema(connection) -> None:  # type: ignore[no-untyped-def]
    connection.execute(
        text(
            "INSERT INTO experiment (id, name, description, policy, strategy, proximal_mu,"
            " server_learning_rate, num_rounds, fraction_train, min_clients, local_steps,"
            " batch_size, learning_rate, seed, eval_every, eval_batches, checkpoint_every,"
            " keep_checkpoints, mode, client_datasets, eval_datasets, normalization,"
            " transport_dtype, client_num_cpus, client_num_gpus, device, created_at, updated_at)"
            " VALUES (1, 'e', '', 'tiny', 'fedavg', 0, 0.01, 2, 1, 1, 1, 1, 0.1, 0, 1, 1, 1, 1,"
            " 'simulation', '[]', '[]', 'local', 'float32', 1, 0, 'cpu',"
            " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
    )
    for run_id in (1, 2):
        connection.execute(
            text(
                "INSERT INTO run (id, experiment_id, config, status, created_at, current_round)"
                " VALUES (:id, 1, '{}', 'succeeded', CURRENT_TIMESTAMP, 2)"
            ),
            {"id": run_id},
        )
        connection.execute(
            text(
                "INSERT INTO checkpoint (run_id, round, path, sha256, size_bytes, created_at)"
                " VALUES (:id, 2, '/x', 'abc', 1, CURRENT_TIMESTAMP)"
            ),
            {"id": run_id},
        )


def test_upgrade_keeps_every_row_and_ids_are_never_reused(empty_database_url: str) -> None:
    """The AUTOINCREMENT rebuild of SQLite's tables keeps their rows and the rows that refer to
    them; existing runs keep their folder (storage key = id); after it, a deleted run's id and a
    deleted experiment's id never come back, on either backend."""
    upgrade_database(empty_database_url, "d8c61578dc65")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            _insert_runs_at_initial_schema(connection)
        upgrade_database(empty_database_url)
        with engine.begin() as connection:
            keys = connection.execute(text("SELECT id, storage_key FROM run ORDER BY id")).all()
            kept = connection.execute(text("SELECT run_id FROM checkpoint ORDER BY run_id")).all()
            if engine.dialect.name == "postgresql":  # ids inserted by hand: move the sequences on
                for table in ("experiment", "run"):
                    connection.execute(
                        text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                    )
            connection.execute(text("DELETE FROM run WHERE id = 2"))
            connection.execute(text("DELETE FROM experiment WHERE id = 1"))
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO experiment (name, description, mode, config, created_at,"
                    " updated_at) VALUES ('f', '', 'simulation', '{}', CURRENT_TIMESTAMP,"
                    " CURRENT_TIMESTAMP)"
                )
            )
            experiment_id = connection.execute(text("SELECT max(id) FROM experiment")).scalar()
            connection.execute(
                text(
                    "INSERT INTO run (experiment_id, storage_key, config, status, created_at,"
                    " current_round) VALUES (:e, 'k', '{}', 'queued', CURRENT_TIMESTAMP, 0)"
                ),
                {"e": experiment_id},
            )
            run_id = connection.execute(text("SELECT max(id) FROM run")).scalar()
    finally:
        engine.dispose()

    assert [tuple(row) for row in keys] == [(1, "1"), (2, "2")]
    assert [row[0] for row in kept] == [1, 2]
    assert experiment_id == 2
    assert run_id == 3


_BEFORE_ONE_DOCUMENT = "cd7b50709bc2"
_OLD_SETTINGS: list[dict[str, Any]] = [
    {
        "name": "split",
        "description": "two labs",
        "policy": "tiny",
        "strategy": "fedprox",
        "proximal_mu": 0.5,
        "server_learning_rate": 0.01,
        "num_rounds": 7,
        "fraction_train": 0.75,
        "min_clients": 2,
        "local_steps": 12,
        "batch_size": 4,
        "learning_rate": 3e-05,
        "seed": 11,
        "eval_every": 2,
        "eval_batches": 3,
        "checkpoint_every": 0,
        "keep_checkpoints": 5,
        "mode": "simulation",
        "client_datasets": [],
        "partition": {
            "dataset": {"repo_id": "lab/so100", "root": "/data/so100", "episodes": [0, 3]},
            "num_clients": 3,
            "scheme": "task",
            "holdout_episodes": 1,
        },
        "eval_datasets": [{"repo_id": "lab/held", "root": None, "episodes": None}],
        "normalization": "federated",
        "transport_dtype": "bfloat16",
        "client_num_cpus": 1.5,
        "client_num_gpus": 0.25,
        "device": "cpu",
    },
    {
        "name": "sites",
        "description": "",
        "policy": "lerobot/smolvla_base",
        "strategy": "fedadam",
        "proximal_mu": 0.0,
        "server_learning_rate": 0.003,
        "num_rounds": 3,
        "fraction_train": 1.0,
        "min_clients": 1,
        "local_steps": 10,
        "batch_size": 8,
        "learning_rate": 0.0001,
        "seed": 0,
        "eval_every": 1,
        "eval_batches": 4,
        "checkpoint_every": 1,
        "keep_checkpoints": 3,
        "mode": "deployment",
        "client_datasets": [],
        "partition": None,
        "eval_datasets": [],
        "normalization": "local",
        "transport_dtype": "float32",
        "client_num_cpus": 1.0,
        "client_num_gpus": 0.0,
        "device": "auto",
    },
]


def _migrate(database_url: str, action: Callable[[Config, str], None], revision: str) -> None:
    engine = make_engine(database_url)
    try:
        with migration_connection(engine) as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            action(config, revision)
    finally:
        engine.dispose()


def _experiment_rows(connection: Connection) -> list[dict[str, Any]]:
    table = Table("experiment", MetaData(), autoload_with=connection)
    rows = connection.execute(select(table).order_by(table.c.id)).mappings()
    return [dict(row) for row in rows]


def test_experiment_settings_become_one_document_and_come_back_unchanged(
    empty_database_url: str,
) -> None:
    """Every settings column of every row moves into experiment.config, which loads as the
    ExperimentConfig it was; rows that refer to experiments stay, a deleted experiment's id is
    still never reused, and the downgrade gives back each column's value."""
    _migrate(empty_database_url, command.upgrade, _BEFORE_ONE_DOCUMENT)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            table = Table("experiment", MetaData(), autoload_with=connection)
            for settings in [*_OLD_SETTINGS, {**_OLD_SETTINGS[1], "name": "deleted"}]:
                connection.execute(
                    insert(table).values(**settings, created_at=utcnow(), updated_at=utcnow())
                )
            connection.execute(text("DELETE FROM experiment WHERE name = 'deleted'"))
            connection.execute(
                text(
                    "INSERT INTO run (experiment_id, storage_key, config, status, created_at,"
                    " current_round) VALUES (1, 'k', '{}', 'succeeded', CURRENT_TIMESTAMP, 2)"
                )
            )
            before = _experiment_rows(connection)

        _migrate(empty_database_url, command.upgrade, "head")
        with Session(engine) as session:
            stored = session.exec(select(Experiment).order_by(col(Experiment.id))).all()
            loaded = [(e.id, e.name, e.description, e.mode, e.config) for e in stored]
            runs = session.exec(select(Run.experiment_id)).all()
            later = Experiment(name="later", config=stored[1].config, mode=stored[1].mode)
            session.add(later)
            session.commit()
            later_id = later.id

        _migrate(empty_database_url, command.downgrade, _BEFORE_ONE_DOCUMENT)
        with engine.connect() as connection:
            after = _experiment_rows(connection)
    finally:
        engine.dispose()

    assert loaded == [
        (
            index + 1,
            old["name"],
            old["description"],
            old["mode"],
            ExperimentConfig.model_validate(
                {k: v for k, v in old.items() if k not in ("name", "description")}
            ),
        )
        for index, old in enumerate(_OLD_SETTINGS)
    ]
    assert runs == [1]
    assert later_id == 4
    assert after[:2] == before
    assert [row["name"] for row in after] == ["split", "sites", "later"]


_BEFORE_FEDERATED_EVALUATION = "b3f1a9c27d41"


def test_evaluation_columns_come_empty_on_earlier_rows_and_go_on_downgrade(
    empty_database_url: str,
) -> None:
    """Rounds and clients recorded before federated evaluation existed keep their values and
    read as not evaluated (NULL, 0 samples); new rows take the columns; the downgrade drops
    them and keeps the rows."""
    _migrate(empty_database_url, command.upgrade, _BEFORE_FEDERATED_EVALUATION)
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            _insert_a_run(connection)
            connection.execute(
                text(
                    "INSERT INTO roundmetric (run_id, round, eval_loss, train_loss, duration_s,"
                    " bytes_sent, bytes_received, clients_sampled, clients_succeeded,"
                    " clients_failed, created_at) VALUES (1, 1, 0.5, 0.7, 1, 0, 0, 1, 1, 0,"
                    " CURRENT_TIMESTAMP)"
                )
            )
            connection.execute(
                text(
                    "INSERT INTO clientmetric (run_id, round, client, ok, train_loss, samples,"
                    " episodes, seconds, load_seconds, bytes_sent, bytes_received)"
                    " VALUES (1, 1, 'client-0', true, 0.7, 8, 2, 1, 0, 0, 0)"
                )
            )
        _migrate(empty_database_url, command.upgrade, "head")
        with engine.begin() as connection:
            old_round = connection.execute(
                text(
                    "SELECT eval_loss, eval_action_mse, fed_eval_loss, fed_eval_action_mse,"
                    " fed_eval_samples FROM roundmetric"
                )
            ).one()
            old_client = connection.execute(
                text(
                    "SELECT train_loss, eval_loss, eval_action_mse, eval_samples FROM clientmetric"
                )
            ).one()
            connection.execute(
                text(
                    "INSERT INTO roundmetric (run_id, round, eval_loss, eval_action_mse,"
                    " fed_eval_loss, fed_eval_action_mse, fed_eval_samples, train_loss,"
                    " duration_s, bytes_sent, bytes_received, clients_sampled,"
                    " clients_succeeded, clients_failed, created_at) VALUES (1, 2, 0.4, 3.5,"
                    " 0.45, 4.0, 16, 0.6, 1, 0, 0, 1, 1, 0, CURRENT_TIMESTAMP)"
                )
            )
        _migrate(empty_database_url, command.downgrade, _BEFORE_FEDERATED_EVALUATION)
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("roundmetric")}
            rounds = connection.execute(
                text("SELECT round, eval_loss FROM roundmetric ORDER BY round")
            ).all()
    finally:
        engine.dispose()

    assert tuple(old_round) == (0.5, None, None, None, 0)
    assert tuple(old_client) == (0.7, None, None, 0)
    assert "fed_eval_loss" not in columns and "eval_action_mse" not in columns
    assert [tuple(r) for r in rounds] == [(1, 0.5), (2, 0.4)]


def _insert_a_run(connection: Connection) -> None:
    connection.execute(
        text(
            "INSERT INTO experiment (name, description, mode, config, created_at, updated_at)"
            " VALUES ('e', '', 'simulation', '{}', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        )
    )
    connection.execute(
        text(
            "INSERT INTO run (experiment_id, storage_key, config, status, created_at,"
            " current_round) VALUES (1, 'k', '{}', 'succeeded', CURRENT_TIMESTAMP, 2)"
        )
    )
