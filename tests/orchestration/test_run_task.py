"""The Celery task itself, applied in this process (Celery's eager apply) on a real database;
its federation child is still a real process."""

import shutil

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import Run, RunStatus
from fedvla.core.services import runs
from fedvla.core.services.events import EventPublisher, events_after
from fedvla.orchestration.celery_app import RUN_TASK
from fedvla.orchestration.dispatch import run_sender
from fedvla.orchestration.tasks import make_worker_celery
from tests.datasets import root_of

NO_REDIS = EventPublisher("")


def _queued_run(engine: Engine, settings: Settings, experiment_id: int) -> int:
    with Session(engine) as session:
        run = runs.launch_run(
            session, run_sender(settings), NO_REDIS, experiment_id=experiment_id, actor="tests"
        )
        assert run.id is not None
        return run.id


def test_a_task_for_a_run_that_never_appears_gives_up(fast_settings: Settings) -> None:
    task = make_worker_celery(fast_settings).tasks[RUN_TASK]

    result = task.apply(args=[999])

    assert result.get() == "missing"


def test_a_cancelled_run_is_not_started(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    run_id = _queued_run(engine, fast_settings, make_experiment().id)
    with Session(engine) as session:
        runs.cancel_run(session, NO_REDIS, run_id, actor="alice")

    result = make_worker_celery(fast_settings).tasks[RUN_TASK].apply(args=[run_id])

    assert result.get() == "cancelled"
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.started_at is None
        assert [e.message for e in events_after(session, run_id)] == [
            "queued by tests",
            "cancelled by alice",
        ]


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_missing_dataset_fails_the_run_with_the_engines_reason(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    """The real engine refuses the dataset before training; the run says which and why: the
    dataset was there at launch (the app checks) and is gone when the worker reads it."""
    root = shutil.copytree(root_of("test/so100_pick"), fast_settings.data_dir / "synthetic")
    dataset = {"repo_id": "local/synthetic", "root": str(root)}
    experiment = make_experiment(partition={"dataset": dataset, "num_clients": 2})
    run_id = _queued_run(engine, fast_settings, experiment.id)
    shutil.rmtree(root)

    result = make_worker_celery(fast_settings).tasks[RUN_TASK].apply(args=[run_id])

    assert result.get() == "failed"
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        assert run.status == RunStatus.failed
        assert run.error is not None
        assert run.error.startswith("federation process exited with code 1: ")
        assert "DatasetError" in run.error
        assert str(fast_settings.data_dir / "synthetic") in run.error
        assert "is missing" in run.error
