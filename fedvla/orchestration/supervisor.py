"""Runs one federation in a child process and watches over it.

The child (forked from the worker's warm process, or ``python -m fedvla.orchestration.run_child
<run_id>``) leads its own process group, so a cancel stops it and everything it started (Ray,
Flower's processes) with one killpg, and a crash of the training stack cannot take the Celery worker
down. While the child runs, the supervisor stamps the run's heartbeat and checks for a cancel about
every half second.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.models import RunStatus
from fedvla.core.services import run_files, runs
from fedvla.core.services.events import EventPublisher, append_event
from fedvla.orchestration import warm
from fedvla.orchestration.run_child import forked_main

log = logging.getLogger(__name__)

CHECK_EVERY_S = 0.5
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    error: str | None = None


def child_env(settings: Settings) -> dict[str, str]:
    """The child reads the same Settings as its worker, through FEDVLA_* variables."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        env[f"FEDVLA_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def failure_reason(returncode: int, log_path: Path) -> str:
    """What went wrong, in a line: the exit code or signal, and the child's last error line."""
    if returncode < 0:
        how = f"killed by {signal.Signals(-returncode).name}"
    else:
        how = f"exited with code {returncode}"
    last = last_error_line(log_path)
    return f"federation process {how}" + (f": {last}" if last else "")


def last_error_line(log_path: Path) -> str:
    """The exception line that ends the last traceback in the log, else its last line."""
    try:
        with log_path.open("rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - LOG_TAIL_BYTES))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    lines = [line.rstrip() for line in lines if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        tail = [line for line in lines[starts[-1] + 1 :] if not line.startswith((" ", "\t"))]
        if tail:
            return tail[-1][:1000]
    return lines[-1][:1000] if lines else ""


class FederationProcess:
    """The child process of one run, in its own session and process group.

    Forked from the worker's warm process (fedvla.orchestration.warm) when settings.warm_start and
    no ``command`` is given, else a fresh ``python -m fedvla.orchestration.run_child``.
    """

    def __init__(
        self, settings: Settings, run_id: int, run_dir: Path, command: Sequence[str] = ()
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.warm = settings.warm_start and not command
        self.command = list(command) or [
            sys.executable,
            "-m",
            "fedvla.orchestration.run_child",
            str(run_id),
        ]
        self.log_path = run_dir / run_files.LOG_NAME
        self.process: subprocess.Popen[bytes] | None = None
        self.forked: BaseProcess | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.warm and not warm.failure:
            self.forked = warm.context().Process(
                target=forked_main,
                args=(self.run_id, child_env(self.settings), str(self.log_path)),
                name=f"fedvla-run-{self.run_id}",
            )
            self.forked.start()
            return
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env(self.settings),
                start_new_session=True,
            )

    @property
    def started(self) -> bool:
        return self.process is not None or self.forked is not None

    @property
    def pid(self) -> int:
        if self.forked is not None:
            assert self.forked.pid is not None
            return self.forked.pid
        assert self.process is not None
        return self.process.pid

    def poll(self) -> int | None:
        if self.forked is not None:
            return self.forked.exitcode
        assert self.process is not None
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        if self.forked is not None:
            self.forked.join(timeout)
            return self.forked.exitcode
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=timeout)
        return None

    def stop(self, grace_s: float) -> int:
        """SIGTERM to the whole group, SIGKILL after ``grace_s``; returns the exit code."""
        self._signal_group(signal.SIGTERM)
        self.wait(grace_s)
        self._signal_group(signal.SIGKILL)
        returncode = self.wait()
        assert returncode is not None
        return returncode

    def reap_group(self) -> None:
        """After the child ended, kill whatever it left behind in its group."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def supervise(
    engine: Engine, settings: Settings, run_id: int, command: Sequence[str] = ()
) -> Outcome:
    """Starts the federation of a claimed run and follows it to its end; records the outcome.

    ``command`` replaces the child's command line (the supervisor's own tests use small scripts).
    """
    publisher = EventPublisher(settings.redis_url)
    with Session(engine) as session:
        run_dir = run_files.run_dir_of(session, settings, run_id)
    try:
        return _supervise(engine, publisher, FederationProcess(settings, run_id, run_dir, command))
    finally:
        publisher.close()


def _supervise(engine: Engine, publisher: EventPublisher, child: FederationProcess) -> Outcome:
    settings, run_id = child.settings, child.run_id
    beat = _Heartbeat(engine, settings, run_id)
    try:
        if child.warm and (status := _wait_for_warm_process(beat)) != RunStatus.running:
            return Outcome(status)  # cancelled (or reaped) before its federation started
        child.start()
        log.info("run %s: federation process %s started", run_id, child.pid)
        with Session(engine) as session:
            event = append_event(session, run_id, "log", f"federation process {child.pid} started")
            session.commit()
            publisher.publish([event])
        while (returncode := child.poll()) is None:
            if (status := beat.status()) != RunStatus.running:
                return _stop_for(engine, publisher, child, settings, run_id, status)
            time.sleep(CHECK_EVERY_S)
        child.reap_group()
        outcome = (
            Outcome(RunStatus.succeeded)
            if returncode == 0
            else Outcome(RunStatus.failed, failure_reason(returncode, child.log_path))
        )
        with Session(engine) as session:
            runs.finish_run(session, publisher, run_id, outcome.status, outcome.error)
        return outcome
    except BaseException as error:
        # The worker is stopping (cold shutdown) or the supervisor failed: leave no orphan, and
        # say so on the run now rather than when the reaper notices the missing heartbeats.
        if child.started:
            child.stop(settings.cancel_grace_s)
        with contextlib.suppress(Exception), Session(engine) as session:
            reason = f"worker stopped while the federation ran ({type(error).__name__})"
            runs.finish_run(session, publisher, run_id, RunStatus.failed, reason)
        raise


class _Heartbeat:
    """Stamps the run's heartbeat every heartbeat_interval_s; says the run's status each time."""

    def __init__(self, engine: Engine, settings: Settings, run_id: int) -> None:
        self.engine = engine
        self.interval_s = settings.heartbeat_interval_s
        self.run_id = run_id
        self.last = 0.0

    def status(self) -> RunStatus:
        with Session(self.engine) as session:
            if time.monotonic() - self.last >= self.interval_s:
                self.last = time.monotonic()
                return runs.heartbeat(session, self.run_id)
            return runs.run_status(session, self.run_id)


def _wait_for_warm_process(beat: _Heartbeat) -> RunStatus:
    """A run that comes while the warm process still imports waits for it, beating meanwhile;
    the fork itself would block the supervisor until then."""
    while not warm.wait_ready(CHECK_EVERY_S):
        if (status := beat.status()) != RunStatus.running:
            return status
    return RunStatus.running


def _stop_for(
    engine: Engine,
    publisher: EventPublisher,
    child: FederationProcess,
    settings: Settings,
    run_id: int,
    status: RunStatus,
) -> Outcome:
    """The run left "running" under us (cancelled, or reaped as lost): stop the federation."""
    started = time.monotonic()
    returncode = child.stop(settings.cancel_grace_s)
    with Session(engine) as session:
        event = append_event(
            session,
            run_id,
            "log",
            f"federation process stopped ({status}) in {time.monotonic() - started:.1f} s, "
            f"exit code {returncode}",
        )
        session.commit()
        publisher.publish([event])
    return Outcome(status)
