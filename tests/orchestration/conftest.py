"""Fixtures for the orchestration: the app, tokens, experiments, and real Celery workers."""

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Experiment, Role, Run, RunStatus, WorkerNode
from fedvla.core.schemas.experiments import ExperimentCreate
from fedvla.core.services import experiments as experiment_service
from fedvla.core.services import tokens as token_service
from fedvla.orchestration.main import start_local_worker
from fedvla.web.main import create_app
from tests.conftest import REDIS_URL, _unavailable

FAST = {"heartbeat_interval_s": 0.5, "lost_after_s": 30.0, "cancel_grace_s": 2.0}
"""Short heartbeats and grace. Runs that tests claim by hand get no heartbeats, so the bound for
a lost run stays wide enough for a loaded machine; tests of the reaper age heartbeats on purpose,
and the kill -9 test, whose workers beat for real, narrows it."""


@pytest.fixture
def fast_settings(settings: Settings) -> Settings:
    return settings.model_copy(update=FAST)


@pytest.fixture
def engine(fast_settings: Settings) -> Iterator[Engine]:
    engine = make_engine(fast_settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def client(fast_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(fast_settings)) as client:
        yield client


def _bearer(session: Session, role: Role, site_id: int | None = None) -> dict[str, str]:
    _token, secret = token_service.create_token(
        session=session, name=f"{role}-{uuid.uuid4().hex[:6]}", role=role, site_id=site_id
    )
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin(session: Session) -> dict[str, str]:
    return _bearer(session, Role.admin)


@pytest.fixture
def viewer(session: Session) -> dict[str, str]:
    return _bearer(session, Role.viewer)


@pytest.fixture
def bearer(session: Session) -> Callable[..., dict[str, str]]:
    return lambda role, site_id=None: _bearer(session, role, site_id)


def tiny_experiment_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": f"exp-{uuid.uuid4().hex[:8]}",
        "policy": "tiny",
        "num_rounds": 2,
        "min_clients": 2,
        "local_steps": 2,
        "batch_size": 2,
        "eval_batches": 1,
        "device": "cpu",
        "client_num_cpus": 1.0,
        "partition": {
            "dataset": {"repo_id": "test/so100_pick"},
            "num_clients": 2,
            "holdout_episodes": 1,
        },
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def make_experiment(session: Session, fast_settings: Settings) -> Callable[..., Experiment]:
    def make(**overrides: Any) -> Experiment:
        data = ExperimentCreate.model_validate(tiny_experiment_fields(**overrides))
        return experiment_service.create_experiment(session=session, data=data)

    return make


def wait_for(condition: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Polls until ``condition()`` is truthy; fails the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def run_status(engine: Engine, run_id: int) -> RunStatus:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run.status


# --------------------------------------------------------------------------- brokers and workers


@pytest.fixture(scope="session")
def redis_broker_base() -> str:
    """A Redis database of its own for this test session's broker (events use REDIS_URL's)."""
    url = REDIS_URL.rsplit("/", 1)[0] + "/14"
    try:
        redis.Redis.from_url(url).ping()
    except redis.RedisError as error:
        _unavailable("Redis", error)
    return url


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def broker_settings(
    request: pytest.FixtureRequest, fast_settings: Settings, tmp_path: Path
) -> Settings:
    """Settings on the embedded SQLite broker or on Redis (broker and event fan-out), each with
    a queue of its own so that no other test's worker takes this test's runs."""
    queue = f"gpu-{uuid.uuid4().hex[:8]}"
    if request.param == "embedded":
        return fast_settings.model_copy(update={"gpu_queue": queue})
    broker = request.getfixturevalue("redis_broker_base")
    return fast_settings.model_copy(
        update={"gpu_queue": queue, "broker_url": broker, "redis_url": REDIS_URL}
    )


class WorkerProcess:
    """A real `python -m fedvla.orchestration.main` Celery worker, as `fedvla serve` starts it."""

    def __init__(self, settings: Settings, engine: Engine, log_dir: Path) -> None:
        self.settings = settings
        self.engine = engine
        self.name = f"{settings.gpu_queue}-{uuid.uuid4().hex[:6]}@test"
        self.log_path = log_dir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        self.process = start_local_worker(self.settings, self.name, str(self.log_path))
        wait_for(self._registered, 180, f"worker {self.name} to register (log: {self.log_path})")
        return self

    def _registered(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"worker exited: {self.log_path.read_text()[-3000:]}")
        with Session(self.engine) as session:
            node = session.exec(select(WorkerNode).where(WorkerNode.name == self.name)).first()
            return node is not None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert self.process is not None
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # cold shutdown: do not wait for a running task
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_worker(
    broker_settings: Settings, engine: Engine, tmp_path: Path
) -> Iterator[Callable[[], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        worker = WorkerProcess(broker_settings, engine, tmp_path).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


# --------------------------------------------------------------------------- a live web server


class LiveServer:
    """The app served by uvicorn on a free port in a thread: real sockets, real streaming."""

    def __init__(self, settings: Settings) -> None:
        import socket
        import threading

        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        wait_for(lambda: self.server.started, 30, "uvicorn to start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_sse(lines: Iterator[str], stop_after: int | None = None) -> list[dict[str, str]]:
    """Server-sent events from a response's lines, as {"id", "event", "data"} dicts.

    Stops after ``stop_after`` events, or at the ``end`` event, or when the stream closes.
    """
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            continue  # a comment (ping)
        if not line:
            if current:
                events.append(current)
                if current.get("event") == "end" or len(events) == stop_after:
                    return events
            current = {}
            continue
        field, _, value = line.partition(":")
        current[field] = value.removeprefix(" ")
    return events
