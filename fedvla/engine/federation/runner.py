"""Run a simulated federation in this process with Flower's simulation engine.

Its callers: the Celery worker's federation process (fedvla.orchestration.run_child), the standalone
command (python -m fedvla.engine.federation) and the benchmarks. `flwr run .` and deployment runs
(fedvla.orchestration.deployment.federation, on a SuperLink) start their ServerApps without it.

Ray makes this process the leader of its own process group (or keeps it so if it was started
with start_new_session=True) and starts its GCS, raylet and actors inside that group, so
`os.killpg(child_pid, SIGTERM)`, then SIGKILL after a grace period, ends the whole federation.
Before anything starts, every client's dataset is checked against the experiment; a bad one
raises DatasetError naming the client, the dataset and the mismatch.
"""

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedvla.core.experiment_config import FederationConfig
from fedvla.engine.data.features import DatasetFeatures, check_dataset
from fedvla.engine.data.partition import DataPlan, client_label, plan_data
from fedvla.engine.federation.reporter import Reporter

RAY_OBJECT_STORE_BYTES = 256 * 1024 * 1024
REPLY_PULL_INTERVAL_S = 0.01
"""How often the simulated server looks for client replies (Flower's default, 0.1 s, adds 50 ms
to an average round, a tenth of a tiny policy's round)."""
MESSAGES_PER_CLIENT_PROCESS = 2
"""Train messages pushed ahead per process serving clients (StreamingGrid's max_in_flight): one
being trained and the next waiting for it, so a process never idles on the server, while the
replies that can wait in the server for their turn in the sum are bounded by the processes, not
by the clients (with every message pushed at once, a server that sums more slowly than its
actors train, as on a loaded machine, could hold them all). In bench/client_memory.py (medium
policy, 2 actors, 32 clients) it did not change the peak measurably: 4.84 GiB against 4.93."""
ENGINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DEDUP_LOGS": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}
"""Set (unless already set) before Ray starts: its workers inherit them."""


def check_inputs(config: FederationConfig) -> DataPlan:
    """The run's data plan, once every client's and the server's datasets exist, read, and
    agree on features; else raise."""
    from fedvla.engine.federation.task import open_dataset

    plan = plan_data(config)
    expected: DatasetFeatures | None = None
    owners = [client_label(i) for i in range(len(plan.clients))]
    owners += ["server evaluation"] * len(plan.holdout)
    for owner, ref in zip(owners, plan.clients + plan.holdout, strict=True):
        found = check_dataset(ref, owner, expected)
        expected = expected or found
        # the frames' tables load, not just metadata
        open_dataset(ref, chunk_size=1, owner=owner, with_stats=False)
    return plan


def run_federation(
    config: FederationConfig,
    reporter: Reporter,
    *,
    output_dir: Path,
    data_dir: Path,
    clients: Literal["forked", "ray"] = "ray",
) -> None:
    """Run one federation to its end, reporting every round; raise on failure.

    ``clients``: the ClientApps run in Ray actors, or in processes forked from this one
    (fedvla.engine.federation.forked_clients: nothing to import again, no Ray to start). Forking is
    safe only in a process whose torch has not run its thread pools yet, as in the federation
    process the worker forks from its warm process (fedvla.orchestration.run_child): a child forked
    after the caller trained in-process waits forever on the pool's lock (seen in
    bench/federation_overhead.py).
    """
    from flwr.simulation import run_simulation
    from flwr.superlink.grid import InMemoryGrid

    from fedvla.engine.federation.client_app import app as client_app
    from fedvla.engine.federation.server_app import ServerRun, federation_server_app

    if config.mode != "simulation":
        raise NotImplementedError("deployment runs go through a SuperLink (flwr run)")
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    output_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    plan = check_inputs(config)
    reporter.log(f"starting {config.strategy} over {config.num_clients} simulated clients")

    failure: list[BaseException] = []
    cpus = max(os.cpu_count() or 1, int(config.client_num_cpus))
    # the processes serving clients, as Ray's pool (and forked_clients.placement) count them by
    # CPUs; fewer where GPUs bound them, which only widens the window
    processes = max(1, int(cpus / config.client_num_cpus))

    @contextlib.contextmanager
    def in_this_process(grid: Grid, context: Context) -> Iterator[ServerRun]:
        if isinstance(grid, InMemoryGrid):
            grid.pull_interval = REPLY_PULL_INTERVAL_S
        try:
            yield ServerRun(
                grid,
                config,
                reporter,
                output_dir,
                data_dir,
                plan,
                reply_pull_interval_s=REPLY_PULL_INTERVAL_S,
                max_in_flight=MESSAGES_PER_CLIENT_PROCESS * processes,
            )
        except BaseException as error:  # run_simulation may raise its own error instead of it
            failure.append(error)
            raise

    backend_config = {
        "client_resources": {
            "num_cpus": config.client_num_cpus,
            "num_gpus": config.client_num_gpus,
        },
        "init_args": {
            "num_cpus": cpus,
            "object_store_memory": RAY_OBJECT_STORE_BYTES,
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        },
    }
    engine: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if clients == "forked":
        engine = _forked_clients(config, client_app, reporter)
    try:
        with engine:
            run_simulation(
                server_app=federation_server_app(in_this_process),
                client_app=client_app,
                num_supernodes=config.num_clients,
                backend_config=backend_config,  # type: ignore[arg-type]
            )
    except BaseException as error:
        if failure:
            raise failure[0] from error
        raise
    if failure:
        raise failure[0]


@contextlib.contextmanager
def _forked_clients(config: FederationConfig, app: ClientApp, reporter: Reporter) -> Iterator[None]:
    """Client processes forked before the simulation starts its threads, used by Flower."""
    from fedvla.engine.federation.forked_clients import ForkedClientPool, flower_uses, placement

    where = placement(config.num_clients, config.client_num_cpus, config.client_num_gpus)
    pool = ForkedClientPool(app, where)
    reporter.log(f"clients served by {pool.size} forked processes")
    try:
        with flower_uses(pool):
            yield
    finally:
        pool.close()
