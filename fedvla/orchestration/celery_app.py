"""The Celery application, built from Settings, without its tasks.

The web app sends the run task by its name (``RUN_TASK``, fedvla.orchestration.dispatch) through
this app; only the worker registers the task itself (fedvla.orchestration.tasks.make_worker_celery),
so sending a run imports nothing of the worker's task, supervisor or engine.

No result backend: the database is the source of truth for what a run did. Tasks are acknowledged
late and rejected (so redelivered) when their worker dies; a redelivered run task finds its run no
longer queued and does nothing, and the lost run is failed by the heartbeat reaper instead.
"""

from celery import Celery

from fedvla.core.config import Settings
from fedvla.orchestration import embedded_broker

RUN_TASK = "fedvla.run_federation"
VISIBILITY_TIMEOUT_S = 3600
"""Redis redelivers an unacknowledged task after this long; a redelivered run task is a no-op."""


EMBEDDED_PREFIX = "sqla+"


def _broker(broker_url: str) -> tuple[str, str | None]:
    """The broker URL and transport Celery gets: ``sqla+<url>`` goes to the embedded broker."""
    if broker_url.startswith(EMBEDDED_PREFIX):
        transport = f"{embedded_broker.__name__}:{embedded_broker.EmbeddedBrokerTransport.__name__}"
        return broker_url.removeprefix(EMBEDDED_PREFIX), transport
    return broker_url, None


class FedvlaCelery(Celery):
    """A Celery app that carries the Settings it was built from, for its tasks to read."""

    def __init__(self, settings: Settings) -> None:
        broker_url, transport = _broker(settings.broker_url)
        super().__init__("fedvla", broker=broker_url, set_as_current=False)
        if transport is not None:
            self.conf.broker_transport = transport
        if settings.broker_url == settings.embedded_broker_url:
            # Its SQLite file needs the data dir, which nothing else makes when the database is
            # PostgreSQL: launches answered 503 on a fresh machine.
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings


def broker_transport_options(broker_url: str) -> dict[str, object]:
    if broker_url.startswith(EMBEDDED_PREFIX):
        return embedded_broker.transport_options()
    return {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "socket_connect_timeout": 3,
        "socket_timeout": 10,
    }


def make_celery(settings: Settings) -> FedvlaCelery:
    app = FedvlaCelery(settings)
    app.conf.update(
        task_default_queue=settings.gpu_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        broker_transport_options=broker_transport_options(settings.broker_url),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        result_backend=None,
        enable_utc=True,
    )
    return app
