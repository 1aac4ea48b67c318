"""The embedded broker shared by two processes: a launch is queued or refused, never lost."""

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, func, select

from fedvla.core.config import Settings
from fedvla.core.models import Run
from fedvla.orchestration import dispatch, embedded_broker


def _broker_file(settings: Settings) -> Path:
    return Path(settings.broker_url.removeprefix("sqla+sqlite:///"))


def _queued_messages(settings: Settings) -> int:
    with sqlite3.connect(_broker_file(settings)) as connection:
        return int(connection.execute("SELECT count(*) FROM kombu_message").fetchone()[0])


def test_a_launch_that_cannot_write_the_broker_is_refused_and_leaves_no_run(
    client: TestClient,
    session: Session,
    admin: dict[str, str],
    make_experiment,
    fast_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process holds the broker's write lock past the busy timeout: the launch answers
    503 and creates no run, instead of answering 202 for a task that was never queued."""
    monkeypatch.setattr(embedded_broker, "BUSY_TIMEOUT_S", 0.2)
    experiment = make_experiment()
    runs_url = f"/api/v1/experiments/{experiment.id}/runs"
    first = client.post(runs_url, headers=admin)  # creates the broker's tables and queue row
    assert first.status_code == 202, first.text
    assert _queued_messages(fast_settings) == 1

    writer = sqlite3.connect(_broker_file(fast_settings), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # readers may go on; no other process may write
    try:
        refused = client.post(runs_url, headers=admin)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    assert refused.status_code == 503, refused.text
    [problem] = refused.json()["errors"]
    assert problem["field"] == "broker" and "database is locked" in problem["reason"]
    assert session.exec(select(func.count()).select_from(Run)).one() == 1
    assert _queued_messages(fast_settings) == 1
    again = client.post(runs_url, headers=admin)
    assert again.status_code == 202, again.text
    assert _queued_messages(fast_settings) == 2


def test_a_queue_row_another_process_wrote_first_is_read_not_fatal(tmp_path: Path) -> None:
    """The web app and a worker that start on a new queue both insert its row on first use; the
    one whose insert loses (here: the row appears between its check and its insert) reads the
    winner's row and sends (it failed the launch with 503 though the broker was up)."""
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        gpu_queue="gpu-new",
        redis_url="",
    )
    dispatch.send_run(settings.model_copy(update={"gpu_queue": "other"}), 0)  # the tables

    raced: list[str] = []

    def other_process_inserts_first(session: OrmSession, *_args: object) -> None:
        if not raced and "gpu-new" in [getattr(new, "name", None) for new in session.new]:
            raced.append("gpu-new")
            with sqlite3.connect(_broker_file(settings)) as other:
                other.execute("INSERT INTO kombu_queue (name) VALUES ('gpu-new')")

    event.listen(OrmSession, "before_flush", other_process_inserts_first)
    try:
        dispatch.send_run(settings, 1)
    finally:
        event.remove(OrmSession, "before_flush", other_process_inserts_first)

    assert raced == ["gpu-new"]

    assert _queued_messages(settings) == 2
    with sqlite3.connect(_broker_file(settings)) as connection:
        queues = connection.execute("SELECT name FROM kombu_queue ORDER BY name").fetchall()
    assert queues == [("gpu-new",), ("other",)]
