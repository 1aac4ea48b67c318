"""Starting a GPU worker: ``fedvla worker`` (production) and the local one ``fedvla serve`` starts.

A worker consumes the GPU queue one federation at a time (solo pool, prefetch 1), registers itself
with its GPUs, and sends heartbeats from a thread, which also fails runs whose worker was lost.
With settings.warm_start it also starts its warm process (fedvla.orchestration.warm), which
federations fork from.
"""

import argparse
import logging
import subprocess
import sys

from celery.utils.nodenames import default_nodename

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.orchestration import warm
from fedvla.orchestration.registry import HeartbeatThread, default_worker_name, register_worker
from fedvla.orchestration.supervisor import child_env
from fedvla.orchestration.tasks import make_worker_celery


def run_worker(settings: Settings, name: str | None = None, loglevel: str = "INFO") -> None:
    """Runs a Celery worker for ``settings.gpu_queue`` in this process until it is stopped."""
    name = default_nodename(name or default_worker_name(settings.gpu_queue))  # celery@<name>
    engine = make_engine(settings.database_url)
    register_worker(engine, settings, name)
    heartbeats = HeartbeatThread(engine, settings, name)
    heartbeats.beat()  # fail runs a previous incarnation of this worker left behind, at once
    heartbeats.start()
    if settings.warm_start:
        warm.warm_up_in_background()
    app = make_worker_celery(settings)
    try:
        app.worker_main(
            [
                "worker",
                f"--hostname={name}",
                f"--queues={settings.gpu_queue}",
                "--pool=solo",
                "--concurrency=1",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        heartbeats.stop()
        engine.dispose()


def start_local_worker(
    settings: Settings, name: str | None = None, log_file: str | None = None
) -> "subprocess.Popen[bytes]":
    """A worker in a subprocess, beside the web server (``fedvla serve``); the caller stops it."""
    command = [sys.executable, "-m", "fedvla.orchestration.main"]
    if name:
        command.append(f"--name={name}")
    output = open(log_file, "ab") if log_file else None  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(
            command, env=child_env(settings), stdout=output, stderr=subprocess.STDOUT
        )
    finally:
        if output is not None:
            output.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A fedvla GPU worker (settings from FEDVLA_*).")
    parser.add_argument("--name", help="Worker name; default <queue>@<host>.")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel, format="%(asctime)s %(levelname)s %(message)s")
    run_worker(Settings(), name=args.name, loglevel=args.loglevel)


if __name__ == "__main__":
    main()
