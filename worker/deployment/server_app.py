"""The ServerApp of deployment runs: B's federation (worker.federation.server_app.run_server)
reporting into our database, exactly as a simulation run does.

It runs in a ``flwr-serverapp`` process that the SuperLink's SuperExec starts. That process
inherits the SuperLink's environment, where the FEDVLA_* settings are (``fedvla superlink``
runs with the server's settings): the database URL never travels in the run config, which
SuperNodes can read. The run config names only our run id (``fedvla-run-id``).
"""

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from app.core.config import Settings
from worker.db_reporter import DbReporter
from worker.federation.run_config import federation_config_from_run_config
from worker.federation.server_app import run_server

RUN_ID_KEY = "fedvla-run-id"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_id = int(context.run_config[RUN_ID_KEY])
    config = federation_config_from_run_config(
        {k: v for k, v in context.run_config.items() if k != RUN_ID_KEY}
    )
    settings = Settings()
    reporter = DbReporter(settings.database_url, settings.redis_url, run_id)
    output_dir = settings.checkpoint_dir / str(run_id)
    try:
        reporter.log(f"ServerApp on the SuperLink: Flower run {context.run_id}")
        run_server(grid, config, reporter, output_dir=output_dir, data_dir=Path(settings.data_dir))
    finally:
        reporter.close()
