"""Sending a run to the GPU workers through the Celery broker, by the task's name."""

import threading
from functools import partial

from celery import Celery

from fedvla.core.config import Settings
from fedvla.core.services.runs import BrokerDown, RunSender
from fedvla.orchestration.celery_app import RUN_TASK, make_celery

_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}
"""A broker that is down fails the launch within about a second instead of hanging the request."""

_senders: dict[tuple[str, str], Celery] = {}
_lock = threading.Lock()


def _sender(settings: Settings) -> Celery:
    key = (settings.broker_url, settings.gpu_queue)
    with _lock:
        if key not in _senders:
            _senders[key] = make_celery(settings)
        return _senders[key]


def send_run(settings: Settings, run_id: int) -> str:
    """Queues run ``run_id`` on the GPU queue and returns the Celery task id; BrokerDown when the
    broker does not take it (nothing was queued)."""
    try:
        result = _sender(settings).send_task(
            RUN_TASK,
            args=[run_id],
            queue=settings.gpu_queue,
            retry=True,
            retry_policy=_PUBLISH_RETRY,
        )
    except Exception as error:  # kombu, redis, socket and SQLAlchemy errors all mean the same
        raise BrokerDown(f"{type(error).__name__}: {error}") from error
    return str(result.id)


def run_sender(settings: Settings) -> RunSender:
    """What fedvla.core.services.runs.launch_run sends its run with: settings' broker and GPU
    queue."""
    return partial(send_run, settings)
