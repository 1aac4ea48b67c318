"""The ServerApp of deployment runs: the engine's federation (fedvla.engine.federation.server_app)
on the experiment's sites only, reporting into our database, exactly as a simulation run does.

It runs in a ``flwr-serverapp`` process that the SuperLink's SuperExec starts. That process
inherits the SuperLink's environment, which holds the FEDVLA_* settings it reads and no others
(fedvla.sites.superlink.SERVER_APP_SETTINGS): the database URL never travels in the run
config, which SuperNodes can read. The run config names only our run id (``fedvla-run-id``).

Its log (Flower's and the engine's, and the traceback if it fails) is appended to the run's
federation.log, beside the worker's federation process's output, as a simulation run's log is:
the flwr-serverapp process's own output goes to the SuperLink, not to the run.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.models import Site
from fedvla.core.services import run_files
from fedvla.engine.federation.reporter import RoundReport
from fedvla.engine.federation.run_config import federation_config_from_run_config
from fedvla.engine.federation.server_app import ServerRun, federation_server_app
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.deployment.experiment_grid import (
    ExperimentGrid,
    approved_sites,
    experiment_camera_maps,
    experiment_nodes,
)

RUN_ID_KEY = "fedvla-run-id"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"  # the federation process's

logger = logging.getLogger(__name__)


class SiteReporter(DbReporter):
    """Client metrics carry their site's id: clients are labelled with their site's name
    (the kit's node config ``site-label``)."""

    def __init__(self, settings: Settings, run_id: int, site_ids: list[int]) -> None:
        super().__init__(settings.database_url, settings.redis_url, run_id)
        with Session(self.engine) as session:
            rows = session.exec(select(Site).where(col(Site.id).in_(site_ids)))
            self.site_ids = {site.name: site.id for site in rows}

    def round_finished(self, report: RoundReport) -> None:
        clients = [
            replace(c, site_id=self.site_ids.get(c.client, c.site_id)) for c in report.clients
        ]
        super().round_finished(replace(report, clients=clients))


@contextmanager
def logging_into(path: Path) -> Iterator[None]:
    """This process's log records (Flower's logger propagates to the root) appended to ``path``
    while the block runs, with the exception that ends it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root, requests = logging.getLogger(), logging.getLogger("httpx")
    levels = root.level, requests.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    requests.setLevel(logging.WARNING)  # a line per Runtime API request (20 a second) otherwise
    try:
        yield
    except BaseException:
        logger.exception("the ServerApp failed")
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        requests.setLevel(levels[1])
        handler.close()


@contextmanager
def _on_superlink(grid: Grid, context: Context) -> Iterator[ServerRun]:
    run_id = int(context.run_config[RUN_ID_KEY])
    config = federation_config_from_run_config(
        {k: v for k, v in context.run_config.items() if k != RUN_ID_KEY}
    )
    settings = Settings()
    reporter = SiteReporter(settings, run_id, config.site_ids)
    with Session(reporter.engine) as session:
        output_dir = run_files.run_dir_of(session, settings, run_id)
    try:
        with logging_into(run_files.federation_log(output_dir)):
            logger.info(
                "ServerApp of run %d on the SuperLink: Flower run %d", run_id, context.run_id
            )
            reporter.log(f"ServerApp on the SuperLink: Flower run {context.run_id}")
            experiment_grid = ExperimentGrid(
                grid,
                nodes=lambda: experiment_nodes(settings, config.site_ids),
                approved=lambda: approved_sites(reporter.engine, config.site_ids),
                camera_maps=experiment_camera_maps(settings, config.site_ids),
            )
            yield ServerRun(
                experiment_grid,
                config,
                reporter,
                output_dir=output_dir,
                data_dir=Path(settings.data_dir),
                node_names=experiment_grid.node_name,
            )
    finally:
        reporter.close()


app = federation_server_app(_on_superlink)
