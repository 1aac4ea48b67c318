"""The federation process of one run: forked from the worker's warm process (``forked_main``,
see fedvla.orchestration.warm), or ``python -m fedvla.orchestration.run_child <run_id>``.

Started by fedvla.orchestration.supervisor in its own process group, with the worker's settings in
FEDVLA_* variables. It reads the run's frozen config, announces itself with a first event (importing
only what that needs: the dispatch latency includes this process's start), runs the engine with the
database reporter, and exits 0 on success; on failure the traceback goes to the run's federation.log
and the exit code is 1.
"""

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.experiment_config import FederationConfig
from fedvla.core.models import Run
from fedvla.core.services import run_files
from fedvla.orchestration.db_reporter import DbReporter


def watch_parent(parent_pid: int, every_s: float = 1.0) -> threading.Thread:
    """If the worker dies (kill -9), take down this process group rather than train on alone."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="fedvla-parent-watch", daemon=True)
    thread.start()
    return thread


def forked_main(run_id: int, env: dict[str, str], log_path: str) -> None:
    """The federation process when forked from the worker's warm process
    (fedvla.orchestration.warm).

    It does here what ``subprocess.Popen(..., start_new_session=True)`` does for ``main``: a
    session and process group of its own, the worker's settings as its environment, and its
    output into the run's log.
    """
    preloaded = "fedvla.engine.federation.runner" in sys.modules
    _drop_worker_alive_fd()
    os.setsid()
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for target in (1, 2):
        os.dup2(log_fd, target)
    os.close(log_fd)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    os.environ.clear()
    os.environ.update(env)
    raise SystemExit(main([str(run_id)], forked_warm=preloaded))


def _drop_worker_alive_fd() -> None:
    """Close this process's copy of the worker's end of the fork server's alive pipe.

    The fork server hands it to every child; while any copy is open the fork server never sees
    the worker die, so it never exits and the parent watch below never fires (kill -9 of the
    worker would leave the federation training).
    """
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # its alive fd is private to the standard library
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def main(argv: list[str], forked_warm: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_id = int(argv[0])
    watch_parent(os.getppid())
    settings = Settings()
    engine = make_engine(settings.database_url)
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            raise SystemExit(f"run {run_id} not found in the database")
        config = FederationConfig.model_validate(run.config)
        output_dir = run_files.run_dir(settings, run.storage_key)
    engine.dispose()
    reporter = DbReporter(settings.database_url, settings.redis_url, run_id)
    how = f", forked from warm process {os.getppid()}" if forked_warm else ""
    reporter.log(f"federation process {os.getpid()} ready on {socket.gethostname()}{how}")

    try:
        if config.mode == "deployment":
            from fedvla.orchestration.deployment.federation import run_on_superlink

            run_on_superlink(settings, run_id, config, reporter)
        else:
            from fedvla.engine.federation.runner import (
                run_federation,
            )  # heavy: torch, flwr, lerobot

            run_federation(
                config,
                reporter,
                output_dir=output_dir,
                data_dir=settings.data_dir,
                clients="forked" if settings.warm_start else "ray",
            )
    finally:
        reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
