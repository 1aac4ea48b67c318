"""Fault injection on real federations (tiny policy, 2 simulated clients, embedded stack):
workers and the web server killed with SIGKILL at chosen moments, Redis unreachable, checkpoint
files corrupted or deleted, an experiment deleted and recreated.

Each case checks what a user sees (status, events, HTTP answers: never a 5xx) and that nothing
committed is lost: every round and checkpoint row written before the fault is still there, and
every checkpoint row's weights are on disk with their recorded sha256. Each case prints one
``FAULT`` line with its figures (run with ``-s`` to see them).
"""

import hashlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.models import Checkpoint, Experiment, RoundMetric, Run, RunEvent, RunStatus
from fedvla.core.services import run_files
from fedvla.orchestration.supervisor import child_env
from tests.orchestration.conftest import LiveServer, WorkerProcess, read_sse, wait_for
from tests.orchestration.test_celery_runs import (
    _checkpoint_rounds,
    _explain,
    _federation_pid,
    _group_alive,
    _run,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.parametrize("fast_settings", ["embedded"], indirect=True),
]

FEDVLA = str(Path(sys.executable).parent / "fedvla")
RUN_TIMEOUT_S = 600
"""Generous: on a shared 2-CPU machine under load, starting Ray alone took minutes."""


def _final(engine: Engine, run_id: int, worker: WorkerProcess, settings: Settings) -> Run:
    try:
        wait_for(lambda: _run(engine, run_id).status.is_final, RUN_TIMEOUT_S, "the run to end")
    except pytest.fail.Exception:  # the logs as they are now, not as they were at the start
        pytest.fail(f"run {run_id} did not end\n{_explain(worker, settings, run_id)}")
    return _run(engine, run_id)


# --------------------------------------------------------------------------- what was committed


@dataclass
class Committed:
    """A run's rounds and checkpoints (round -> sha256) as the database holds them."""

    rounds: set[int] = field(default_factory=set)
    checkpoints: dict[int, str] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, engine: Engine, run_id: int) -> "Committed":
        with Session(engine) as session:
            rounds = set(
                session.exec(select(RoundMetric.round).where(RoundMetric.run_id == run_id))
            )
            rows = session.exec(select(Checkpoint).where(Checkpoint.run_id == run_id)).all()
        return cls(rounds, {c.round: c.sha256 for c in rows}, {c.round: c.path for c in rows})

    def rows_lost_since(self, before: "Committed", retention_removed: set[int]) -> int:
        lost_rounds = before.rounds - self.rounds
        lost_checkpoints = set(before.checkpoints) - set(self.checkpoints) - retention_removed
        return len(lost_rounds) + len(lost_checkpoints)

    def files_lost(self) -> int:
        """Checkpoint rows whose weights are gone or differ from the recorded sha256."""
        lost = 0
        for round_, path in self.paths.items():
            weights = Path(path) / "model.safetensors"
            ok = weights.is_file() and _sha256(weights) == self.checkpoints[round_]
            lost += not ok
        return lost


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _removed_by_retention(engine: Engine, run_id: int) -> set[int]:
    with Session(engine) as session:
        events = session.exec(
            select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.kind == "checkpoint")
        ).all()
    return {int(e.data["round"]) for e in events if e.data.get("removed")}


def _messages(engine: Engine, run_id: int) -> list[str]:
    with Session(engine) as session:
        query = select(RunEvent.message).where(RunEvent.run_id == run_id)
        return list(session.exec(query.order_by(col(RunEvent.id))))


class Http:
    """An HTTP client that counts the server errors it was answered."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.server_errors: list[str] = []

        def count(response: httpx.Response) -> None:
            if response.status_code >= 500:
                self.server_errors.append(f"{response.request.url} {response.status_code}")

        self.client = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=RUN_TIMEOUT_S,
            event_hooks={"response": [count]},
        )

    def __enter__(self) -> httpx.Client:
        return self.client

    def __exit__(self, *_exc: object) -> None:
        self.client.close()


def _figures(case: str, http: Http, rows_lost: int, files_lost: int) -> None:
    print(
        f"\nFAULT {case}: 5xx={len(http.server_errors)} rows_lost={rows_lost} "
        f"files_lost={files_lost}"
    )
    assert http.server_errors == []
    assert (rows_lost, files_lost) == (0, 0)


def _launch(http: httpx.Client, experiment_id: int, **body: object) -> int:
    response = http.post(f"/api/v1/experiments/{experiment_id}/runs", json=body or None)
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def _long_experiment(http: httpx.Client, experiment_id: int, rounds: int = 200) -> None:
    patched = http.patch(f"/api/v1/experiments/{experiment_id}", json={"num_rounds": rounds})
    assert patched.status_code == 200, patched.text


@pytest.fixture
def live(fast_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(fast_settings) as server:
        yield server


# --------------------------------------------------------------------------- worker faults


def test_worker_killed_before_it_claims_the_run(
    fast_settings: Settings,
    engine: Engine,
    start_worker: Callable[[], WorkerProcess],
    experiment_id: int,
    live: LiveServer,
    admin: dict[str, str],
) -> None:
    """The only worker dies; the run waits, queued, and the next worker runs it to the end."""
    start_worker().kill9()
    http = Http(live.url, admin)
    with http as client:
        run_id = _launch(client, experiment_id)
        time.sleep(2)
        assert client.get(f"/api/v1/runs/{run_id}").json()["status"] == "queued"
        worker = start_worker()
        run = _final(engine, run_id, worker, fast_settings)
        answer = client.get(f"/api/v1/runs/{run_id}").json()
    after = Committed.of(engine, run_id)

    assert run.status == RunStatus.succeeded
    assert answer["status"] == "succeeded"
    assert after.rounds == {0, 1, 2} and set(after.checkpoints) == {1, 2}
    _figures("worker kill -9 before claim", http, 0, after.files_lost())


@pytest.mark.parametrize("moment", ["mid-round", "checkpoint-write"])
def test_worker_killed_mid_run_keeps_everything_committed(
    fast_settings: Settings,
    engine: Engine,
    start_worker: Callable[[], WorkerProcess],
    experiment_id: int,
    live: LiveServer,
    admin: dict[str, str],
    moment: str,
) -> None:
    """SIGKILL to the worker in the middle of a round, or while a checkpoint folder is being
    written (its staging folder exists): the run fails as lost, and every round and checkpoint
    committed before stays, with weights matching their sha256."""
    worker = start_worker()
    http = Http(live.url, admin)
    with http as client:
        _long_experiment(client, experiment_id)
        run_id = _launch(client, experiment_id)
        pid = _federation_pid(worker, run_id)
        wait_for(lambda: _checkpoint_rounds(engine, run_id), RUN_TIMEOUT_S, "a first checkpoint")
        if moment == "checkpoint-write":
            with Session(engine) as session:
                folder = run_files.run_dir_of(session, fast_settings, run_id) / "checkpoints"
            wait_for(
                lambda: any(folder.glob(".round_*")), RUN_TIMEOUT_S, "a checkpoint being written"
            )
        before = Committed.of(engine, run_id)
        worker.kill9()
        wait_for(lambda: not _group_alive(pid), 30, "the orphaned federation to stop")
        start_worker()  # its heartbeat loop ends the lost run
        lost = wait_for(
            lambda: (run := _run(engine, run_id)).status.is_final and run,
            fast_settings.lost_after_s * 10,
            "the lost run to end",
        )
        answer = client.get(f"/api/v1/runs/{run_id}").json()
        listed = client.get(f"/api/v1/runs/{run_id}/checkpoints").json()["data"]
        downloads = [
            client.get(f"/api/v1/runs/{run_id}/checkpoints/{c['round']}/model.safetensors")
            for c in listed
        ]
    after = Committed.of(engine, run_id)

    assert lost.status == RunStatus.failed
    assert answer["error"] == f"worker lost: no heartbeat for {fast_settings.lost_after_s:.0f} s"
    assert [d.status_code for d in downloads] == [200] * len(listed)
    assert all(_sha256_bytes(d.content) == d.headers["x-checksum-sha256"] for d in downloads)
    rows_lost = after.rows_lost_since(before, _removed_by_retention(engine, run_id))
    _figures(f"worker kill -9 {moment}", http, rows_lost, after.files_lost())


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_worker_killed_after_the_last_round_leaves_the_run_succeeded(
    fast_settings: Settings,
    engine: Engine,
    start_worker: Callable[[], WorkerProcess],
    experiment_id: int,
    live: LiveServer,
    admin: dict[str, str],
) -> None:
    """SIGKILL as soon as the final checkpoint is committed, before the federation process has
    exited: the run still ends succeeded, with everything it wrote."""
    worker = start_worker()
    http = Http(live.url, admin)
    with http as client:
        run_id = _launch(client, experiment_id)
        wait_for(lambda: 2 in _checkpoint_rounds(engine, run_id), RUN_TIMEOUT_S, "the last one")
        before = Committed.of(engine, run_id)
        worker.kill9()
        start_worker()
        run = wait_for(
            lambda: (run := _run(engine, run_id)).status.is_final and run,
            fast_settings.lost_after_s * 10,
            "the run to end",
        )
        answer = client.get(f"/api/v1/runs/{run_id}").json()
    after = Committed.of(engine, run_id)

    assert (run.status, answer["status"], answer["error"]) == (
        RunStatus.succeeded,
        "succeeded",
        None,
    )
    ending = _messages(engine, run_id)[-1]
    print(f"\nlast event after the kill: {ending!r}")
    rows_lost = after.rows_lost_since(before, _removed_by_retention(engine, run_id))
    _figures("worker kill -9 after the last round", http, rows_lost, after.files_lost())


# --------------------------------------------------------------------------- web server faults


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(settings: Settings, port: int, cwd: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [FEDVLA, "serve", "--port", str(port), "--no-worker"],
        env=child_env(settings),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        if process.poll() is not None:
            pytest.fail("fedvla serve exited")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    wait_for(healthy, 60, "fedvla serve to answer")
    return process


def test_web_server_killed_mid_run(
    fast_settings: Settings,
    engine: Engine,
    start_worker: Callable[[], WorkerProcess],
    experiment_id: int,
    admin: dict[str, str],
    tmp_path: Path,
) -> None:
    """SIGKILL to `fedvla serve` during a run: the run goes on on its worker; the restarted
    server shows it succeeded and replays every event."""
    worker = start_worker()
    port = _free_port()
    server = _serve(fast_settings, port, tmp_path)
    http = Http(f"http://127.0.0.1:{port}", admin)
    try:
        with http as client:
            run_id = _launch(client, experiment_id)
            wait_for(lambda: _checkpoint_rounds(engine, run_id), RUN_TIMEOUT_S, "a checkpoint")
            server.kill()
            server.wait()
            run = _final(engine, run_id, worker, fast_settings)
            server = _serve(fast_settings, port, tmp_path)
            answer = client.get(f"/api/v1/runs/{run_id}").json()
            with client.stream("GET", f"/api/v1/runs/{run_id}/events") as stream:
                events = read_sse(stream.iter_lines())
    finally:
        server.kill()
        server.wait()
    after = Committed.of(engine, run_id)

    assert run.status == RunStatus.succeeded and answer["status"] == "succeeded"
    assert [e["event"] for e in events][-1] == "end"
    assert len(events) - 1 == len(_messages(engine, run_id))  # every event replayed
    assert after.rounds == {0, 1, 2} and set(after.checkpoints) == {1, 2}
    _figures("web server kill -9 mid-run", http, 0, after.files_lost())


# --------------------------------------------------------------------------- services and files


def test_redis_unreachable_then_a_corrupted_and_a_deleted_checkpoint(
    fast_settings: Settings,
    engine: Engine,
    tmp_path: Path,
    admin: dict[str, str],
    start_worker: Callable[[], WorkerProcess],
    experiment_id: int,
    request: pytest.FixtureRequest,
) -> None:
    """Redis configured but down (nothing listens on its port): runs, events and streams work
    from the database alone. Then one checkpoint's weights are corrupted and another's deleted:
    both downloads answer 410, each with an event on the run; nothing is vouched for."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    down = fast_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{dead_port}/0"})
    worker = WorkerProcess(down, engine, tmp_path).start()
    request.addfinalizer(worker.stop)
    http = Http("", admin)
    with LiveServer(down) as server, http as client:
        client.base_url = httpx.URL(server.url)
        _long_experiment(client, experiment_id, rounds=3)
        run_id = _launch(client, experiment_id)
        with client.stream("GET", f"/api/v1/runs/{run_id}/events") as stream:
            events = read_sse(stream.iter_lines())
        run = _final(engine, run_id, worker, down)
        committed = Committed.of(engine, run_id)
        corrupt, deleted = sorted(committed.checkpoints)[-2:]
        weights = Path(committed.paths[corrupt]) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
        (Path(committed.paths[deleted]) / "model.safetensors").unlink()
        base = f"/api/v1/runs/{run_id}/checkpoints"
        answers = [
            client.get(f"{base}/{round_}/{kind}")
            for round_ in (corrupt, deleted)
            for kind in ("model.safetensors", "archive")
        ]
        # Outside the 5xx count: a health check that answers 503 for the dead Redis is right.
        health = httpx.get(f"{server.url}/api/v1/health", timeout=RUN_TIMEOUT_S)
    messages = _messages(engine, run_id)

    assert run.status == RunStatus.succeeded
    assert [e["event"] for e in events][-1] == "end"
    assert [a.status_code for a in answers] == [410, 410, 410, 410]
    assert not any("x-checksum-sha256" in a.headers for a in answers)
    assert sum(m.startswith(f"checkpoint of round {corrupt} is corrupt") for m in messages) == 1
    assert sum(m.startswith(f"checkpoint of round {deleted} is missing") for m in messages) == 1
    assert health.status_code == 503
    assert health.json()["redis"]["ok"] is False
    assert health.json()["database"]["ok"] is True
    after = Committed.of(engine, run_id)
    assert after.rows_lost_since(committed, set()) == 0
    # The two damaged files are the injected faults; nothing else may be lost.
    _figures("redis unreachable + corrupt + deleted checkpoint", http, 0, after.files_lost() - 2)


READ_ONLY = ("id", "created_at", "updated_at", "evaluation")
"""What GET answers about an experiment that a create does not take."""


def test_a_deleted_and_recreated_experiment_starts_clean(
    fast_settings: Settings,
    engine: Engine,
    start_worker: Callable[[], WorkerProcess],
    experiment_id: int,
    live: LiveServer,
    admin: dict[str, str],
) -> None:
    """The reported loss: after deleting an experiment with a finished run, the next run (same
    name, recreated) got the old run's id and folder, and retention removed every checkpoint it
    wrote. Now its ids and folder are new and it keeps its checkpoints."""
    worker = start_worker()
    http = Http(live.url, admin)
    with http as client:
        definition = client.get(f"/api/v1/experiments/{experiment_id}").json()
        first = _launch(client, experiment_id)
        assert _final(engine, first, worker, fast_settings).status == RunStatus.succeeded
        with Session(engine) as session:
            first_dir = run_files.run_dir_of(session, fast_settings, first)
        deleted = client.delete(f"/api/v1/experiments/{experiment_id}")
        body = {k: v for k, v in definition.items() if k not in READ_ONLY}
        recreated = client.post("/api/v1/experiments", json=body)
        assert recreated.status_code == 201, recreated.text
        second = _launch(client, recreated.json()["id"])
        run = _final(engine, second, worker, fast_settings)
        listed = client.get(f"/api/v1/runs/{second}/checkpoints").json()["data"]
    after = Committed.of(engine, second)

    assert deleted.status_code == 204
    assert not first_dir.exists()
    with Session(engine) as session:
        assert session.get(Run, first) is None and session.get(Experiment, experiment_id) is None
        second_dir = run_files.run_dir_of(session, fast_settings, second)
    assert (recreated.json()["id"], second) != (experiment_id, first)
    assert second_dir != first_dir
    assert run.status == RunStatus.succeeded
    assert [c["round"] for c in listed] == [1, 2]
    assert not any("removed (retention)" in m for m in _messages(engine, second))
    _figures("deleted and recreated experiment", http, 0, after.files_lost())
