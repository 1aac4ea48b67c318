"""Runs one federation in a child process and watches over it.

The child (``python -m worker.run_child <run_id>``) leads its own process group, so a cancel
stops it and everything it started (Ray, Flower's processes) with one killpg, and a crash of the
training stack cannot take the Celery worker down. While the child runs, the supervisor stamps the
run's heartbeat and checks for a cancel about every half second.
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
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.core.config import Settings
from app.models import RunStatus
from app.services import run_files, runs
from app.services.events import EventPublisher, append_event

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
    """The child process of one run, in its own session and process group."""

    def __init__(
        self, settings: Settings, run_id: int, run_dir: Path, command: Sequence[str] = ()
    ) -> None:
        self.settings = settings
        self.run_id = run_id
        self.command = list(command) or [sys.executable, "-m", "worker.run_child", str(run_id)]
        self.log_path = run_dir / "federation.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def poll(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def stop(self, grace_s: float) -> int:
        """SIGTERM to the whole group, SIGKILL after ``grace_s``; returns the exit code."""
        assert self.process is not None
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        self._signal_group(signal.SIGKILL)
        return self.process.wait()

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
    child = FederationProcess(settings, run_id, run_dir, command)
    child.start()
    log.info("run %s: federation process %s started", run_id, child.pid)
    with Session(engine) as session:
        event = append_event(session, run_id, "log", f"federation process {child.pid} started")
        session.commit()
        publisher.publish([event])
    last_beat = 0.0
    try:
        while (returncode := child.poll()) is None:
            with Session(engine) as session:
                if time.monotonic() - last_beat >= settings.heartbeat_interval_s:
                    status = runs.heartbeat(session, run_id)
                    last_beat = time.monotonic()
                else:
                    status = runs.run_status(session, run_id)
            if status != RunStatus.running:
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
        child.stop(settings.cancel_grace_s)
        with contextlib.suppress(Exception), Session(engine) as session:
            reason = f"worker stopped while the federation ran ({type(error).__name__})"
            runs.finish_run(session, publisher, run_id, RunStatus.failed, reason)
        raise
    finally:
        publisher.close()


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
