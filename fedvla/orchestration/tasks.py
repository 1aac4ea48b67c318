"""The Celery task that runs a federation: claim the run, supervise its child process, record."""

import logging
from typing import Any

from celery import Task
from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import RunStatus
from fedvla.core.services import runs, workers
from fedvla.core.services.events import EventPublisher
from fedvla.orchestration.celery_app import RUN_TASK, FedvlaCelery, make_celery
from fedvla.orchestration.supervisor import supervise

log = logging.getLogger(__name__)

MISSING_RUN_RETRIES = 20
"""The web app sends the task just before it commits the run; wait this many times for it."""
MISSING_RUN_DELAY_S = 0.25

_engines: dict[str, Engine] = {}


def _engine(database_url: str) -> Engine:
    if database_url not in _engines:
        _engines[database_url] = make_engine(database_url)
    return _engines[database_url]


def run_federation(task: Task, run_id: int) -> str:
    """Runs ``run_id`` to its end on this worker; returns the final status."""
    settings = task.app.settings
    engine = _engine(settings.database_url)
    worker_name = str(task.request.hostname or "unknown")
    publisher = EventPublisher(settings.redis_url)
    try:
        with Session(engine) as session:
            try:
                claimed = runs.claim_run(session, publisher, run_id, worker_name)
            except runs.RunMissing:
                if task.request.retries >= MISSING_RUN_RETRIES:
                    log.error("run %s never appeared in the database; task dropped", run_id)
                    return "missing"
                raise task.retry(countdown=MISSING_RUN_DELAY_S) from None
            if not claimed:
                status = runs.run_status(session, run_id)
                log.info("run %s is %s, not queued: nothing to do", run_id, status)
                return str(status)
            workers.set_current_run(session, worker_name, run_id)
        try:
            outcome = supervise(engine, settings, run_id)
        except Exception as error:
            log.exception("run %s: supervising the federation failed", run_id)
            with Session(engine) as session:
                runs.finish_run(
                    session, publisher, run_id, RunStatus.failed, f"worker error: {error}"
                )
            return str(RunStatus.failed)
        finally:
            with Session(engine) as session:
                workers.set_current_run(session, worker_name, None)
        return str(outcome.status)
    finally:
        publisher.close()


def make_worker_celery(settings: Settings) -> FedvlaCelery:
    """The worker's Celery app: fedvla.orchestration.celery_app's, with the run task registered by
    its name."""
    app = make_celery(settings)
    options: dict[str, Any] = {
        "name": RUN_TASK,
        "bind": True,
        "acks_late": True,
        "reject_on_worker_lost": True,
        "max_retries": MISSING_RUN_RETRIES,
    }
    app.task(**options)(run_federation)
    return app
