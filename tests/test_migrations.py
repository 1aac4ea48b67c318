"""The schema is Alembic's: it applies to an empty database and matches app.models exactly."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from app import models  # noqa: F401  (registers the tables)
from app.core.db import make_engine
from app.core.migrate import alembic_config, upgrade_database
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
                    "INSERT INTO experiment (name, description, policy, strategy, proximal_mu,"
                    " server_learning_rate, num_rounds, fraction_train, min_clients, local_steps,"
                    " batch_size, learning_rate, seed, eval_every, eval_batches,"
                    " checkpoint_every, keep_checkpoints, mode, client_datasets, eval_datasets,"
                    " normalization, transport_dtype, client_num_cpus, client_num_gpus, device,"
                    " created_at, updated_at) VALUES ('f', '', 'tiny', 'fedavg', 0, 0.01, 2, 1,"
                    " 1, 1, 1, 0.1, 0, 1, 1, 1, 1, 'simulation', '[]', '[]', 'local',"
                    " 'float32', 1, 0, 'cpu', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
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
