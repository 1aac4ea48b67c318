"""Real federations (the tiny policy, 2 simulated clients) run by real Celery workers.

Two stacks: the embedded default (SQLite database, SQLite broker, no Redis) and production's
(PostgreSQL, Redis broker and event fan-out). Each test launches through the HTTP API.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import Checkpoint, RoundMetric, Run, RunEvent, RunStatus, WorkerNode
from fedvla.core.services import run_files
from tests.conftest import REDIS_URL, _fresh_postgres
from tests.orchestration.conftest import FAST, LiveServer, WorkerProcess, read_sse, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RUN_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def federation_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny VLM and a small synthetic SO-100 dataset, generated once per test session."""
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
    from fedvla.engine.policy.tiny import tiny_vlm_dir

    root = tmp_path_factory.mktemp("federation")
    tiny_vlm_dir(root / "data")
    generate_dataset(root / "synthetic", SyntheticSpec(episodes=5, frames_per_episode=16))
    return root


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("production", marks=[pytest.mark.redis, pytest.mark.postgres]),
    ]
)
def fast_settings(
    request: pytest.FixtureRequest, tmp_path: Path, federation_assets: Path
) -> Iterator[Settings]:
    """Overrides the conftest's: one database per broker, as they are deployed together."""
    data_dir = tmp_path / "data"
    shutil.copytree(federation_assets / "data", data_dir)
    queue = f"gpu-{tmp_path.name[-12:]}"
    common = {"environment": "test", "data_dir": data_dir, "gpu_queue": queue, **FAST}
    common["lost_after_s"] = 8.0  # real workers beat every 0.5 s: a lost one is found soon
    if request.param == "embedded":
        yield Settings(
            **common,
            database_url=request.getfixturevalue("sqlite_url"),
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
            redis_url="",
        )
        return
    broker = request.getfixturevalue("redis_broker_base")
    for url in _fresh_postgres(request.getfixturevalue("postgres_template")):
        yield Settings(**common, database_url=url, broker_url=broker, redis_url=REDIS_URL)


@pytest.fixture
def broker_settings(fast_settings: Settings) -> Settings:
    return fast_settings


@pytest.fixture
def experiment_id(make_experiment, federation_assets: Path) -> int:
    dataset = {"repo_id": "synthetic/so100", "root": str(federation_assets / "synthetic")}
    experiment = make_experiment(
        num_rounds=2, partition={"dataset": dataset, "num_clients": 2, "holdout_episodes": 1}
    )
    return int(experiment.id)


def _run(engine: Engine, run_id: int) -> Run:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run)
        return run


def _launch(client, admin: dict[str, str], experiment_id: int) -> int:
    answer = client.post(f"/api/v1/experiments/{experiment_id}/runs", headers=admin)
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


def _explain(worker: WorkerProcess, settings: Settings, run_id: int) -> str:
    with Session(make_engine(settings.database_url)) as session:
        log = run_files.run_dir_of(session, settings, run_id) / "federation.log"
    federation = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    return f"worker log:\n{worker.log()[-3000:]}\nfederation log:\n{federation}"


def _final(engine: Engine, run_id: int, worker: WorkerProcess, settings: Settings) -> Run:
    wait_for(
        lambda: _run(engine, run_id).status.is_final,
        RUN_TIMEOUT_S,
        f"run {run_id} to finish\n{_explain(worker, settings, run_id)}",
    )
    return _run(engine, run_id)


def _rounds(engine: Engine, run_id: int) -> list[int]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(RoundMetric.round)
                .where(RoundMetric.run_id == run_id)
                .order_by(col(RoundMetric.round))
            )
        )


def _checkpoint_rounds(engine: Engine, run_id: int) -> list[int]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Checkpoint.round)
                .where(Checkpoint.run_id == run_id)
                .order_by(col(Checkpoint.round))
            )
        )


def _current_run(engine: Engine, worker_name: str) -> int | None:
    with Session(engine) as session:
        node = session.exec(select(WorkerNode).where(WorkerNode.name == worker_name)).one()
        return node.current_run_id


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _federation_pid(worker: WorkerProcess, run_id: int) -> int:
    marker = f"run {run_id}: federation process "
    line = wait_for(
        lambda: next((x for x in worker.log().splitlines() if marker in x), None),
        RUN_TIMEOUT_S,  # the first run after a worker starts waits for its warm process
        "the federation process to start",
    )
    return int(line.split(marker)[1].split()[0])


def _launch_long_run(
    client, admin: dict[str, str], experiment_id: int, worker: WorkerProcess
) -> tuple[int, int]:
    """A run of 200 rounds, which a test stops long before its end: its id and federation pid."""
    client.patch(f"/api/v1/experiments/{experiment_id}", headers=admin, json={"num_rounds": 200})
    run_id = _launch(client, admin, experiment_id)
    return run_id, _federation_pid(worker, run_id)


def test_a_federation_end_to_end(
    fast_settings: Settings,
    engine: Engine,
    start_worker,
    experiment_id: int,
    admin: dict[str, str],
    tmp_path: Path,
) -> None:
    """Launch, follow the live events, download the checkpoint, load it with lerobot."""
    worker = start_worker()
    with (
        LiveServer(fast_settings) as server,
        httpx.Client(base_url=server.url, headers=admin, timeout=RUN_TIMEOUT_S) as http,
    ):
        launched = http.post(f"/api/v1/experiments/{experiment_id}/runs")
        assert launched.status_code == 202, launched.text
        run_id = launched.json()["id"]
        with http.stream("GET", f"/api/v1/runs/{run_id}/events") as stream:
            events = read_sse(stream.iter_lines())

        run = _run(engine, run_id)
        assert run.status == RunStatus.succeeded, _explain(worker, fast_settings, run_id)
        assert run.worker == worker.name
        kinds = [event["event"] for event in events]
        assert kinds[0] == "status" and kinds[-1] == "end"
        statuses = [
            json.loads(e["data"])["data"]["status"] for e in events if e["event"] == "status"
        ]
        assert statuses == ["queued", "running", "succeeded"]
        rounds = [json.loads(e["data"])["data"] for e in events if e["event"] == "round"]
        assert [r["round"] for r in rounds] == [0, 1, 2]
        assert all(r["eval_loss"] is not None for r in rounds)
        assert [r["clients_succeeded"] for r in rounds[1:]] == [2, 2]

        metrics = http.get(f"/api/v1/runs/{run_id}/rounds").json()
        assert [m["round"] for m in metrics["data"]] == [0, 1, 2]
        clients = http.get(f"/api/v1/runs/{run_id}/clients?round=2").json()
        assert sorted(c["client"] for c in clients["data"]) == ["client-0", "client-1"]
        checkpoints = http.get(f"/api/v1/runs/{run_id}/checkpoints").json()["data"]
        assert [c["round"] for c in checkpoints] == [1, 2]
        last = checkpoints[-1]

        archive_url = f"/api/v1/runs/{run_id}/checkpoints/2/archive"
        whole = http.get(archive_url)
        assert whole.status_code == 200
        digest = whole.headers["x-checksum-sha256"]
        assert hashlib.sha256(whole.content).hexdigest() == digest
        # A broken download resumes where it stopped.
        half = len(whole.content) // 2
        head = http.get(archive_url, headers={"Range": f"bytes=0-{half - 1}"})
        tail = http.get(archive_url, headers={"Range": f"bytes={half}-"})
        assert (head.status_code, tail.status_code) == (206, 206)
        assert hashlib.sha256(head.content + tail.content).hexdigest() == digest
        weights = http.get(f"/api/v1/runs/{run_id}/checkpoints/2/model.safetensors")
        assert hashlib.sha256(weights.content).hexdigest() == last["sha256"]
        assert weights.headers["x-checksum-sha256"] == last["sha256"]

        listed = http.get("/api/v1/workers").json()["data"]
        mine = next(w for w in listed if w["name"] == worker.name)
        assert mine["online"] is True
        assert mine["queue"] == fast_settings.gpu_queue
        assert mine["current_run_id"] is None
        assert mine["gpus"] == []  # this machine has none

    extracted = tmp_path / "download"
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as tar:
        tar.extractall(extracted, filter="data")
    from lerobot.policies.smolvla import SmolVLAPolicy

    with contextlib.chdir(extracted / "pretrained_model"):  # the tiny VLM is its ./vlm
        policy = SmolVLAPolicy.from_pretrained(extracted / "pretrained_model")
    assert sum(p.numel() for p in policy.parameters()) > 0


# The mechanics below do not depend on the broker: one stack each keeps the suite short.
@pytest.mark.parametrize("fast_settings", ["embedded"], indirect=True)
def test_cancel_stops_the_federation_and_keeps_its_checkpoints(
    fast_settings: Settings,
    engine: Engine,
    start_worker,
    make_experiment,
    experiment_id: int,
    client,
    admin: dict[str, str],
) -> None:
    worker = start_worker()
    run_id, pid = _launch_long_run(client, admin, experiment_id, worker)
    wait_for(lambda: _checkpoint_rounds(engine, run_id), RUN_TIMEOUT_S, "a first checkpoint")

    cancelled = client.post(f"/api/v1/runs/{run_id}/cancel", headers=admin)

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    wait_for(lambda: not _group_alive(pid), 30, "the federation's process group to stop")
    wait_for(lambda: _current_run(engine, worker.name) is None, 30, "the worker to be idle")
    run = _run(engine, run_id)
    assert run.status == RunStatus.cancelled
    assert max(_rounds(engine, run_id)) < 200
    kept = client.get(f"/api/v1/runs/{run_id}/checkpoints", headers=admin).json()["data"]
    assert kept
    with Session(engine) as session:
        paths = session.exec(select(Checkpoint.path).where(Checkpoint.run_id == run_id)).all()
    assert all((Path(path) / "model.safetensors").is_file() for path in paths)
    messages = [
        e["message"]
        for e in client.get(f"/api/v1/runs/{run_id}/events.json?limit=1000", headers=admin).json()[
            "data"
        ]
    ]
    assert any(m.startswith("federation process stopped (cancelled)") for m in messages)


@pytest.mark.parametrize(
    "fast_settings",
    [pytest.param("production", marks=[pytest.mark.redis, pytest.mark.postgres])],
    indirect=True,
)
def test_a_killed_worker_fails_its_run_and_the_run_resumes_from_its_last_checkpoint(
    fast_settings: Settings,
    engine: Engine,
    start_worker,
    experiment_id: int,
    client,
    admin: dict[str, str],
) -> None:
    first_worker = start_worker()
    run_id, pid = _launch_long_run(client, admin, experiment_id, first_worker)
    wait_for(lambda: _checkpoint_rounds(engine, run_id), RUN_TIMEOUT_S, "a first checkpoint")

    first_worker.kill9()

    wait_for(lambda: not _group_alive(pid), 30, "the orphaned federation to stop")
    second_worker = start_worker()  # its heartbeat loop fails the lost run
    lost = wait_for(
        lambda: (run := _run(engine, run_id)).status.is_final and run,
        fast_settings.lost_after_s * 10,
        "the lost run to be failed",
    )
    assert lost.status == RunStatus.failed
    assert lost.error == f"worker lost: no heartbeat for {fast_settings.lost_after_s:.0f} s"
    done = _rounds(engine, run_id)
    saved = _checkpoint_rounds(engine, run_id)
    assert done and saved and max(saved) <= max(done)
    last = max(saved)

    client.patch(
        f"/api/v1/experiments/{experiment_id}", headers=admin, json={"num_rounds": last + 2}
    )
    resumed = client.post(
        f"/api/v1/experiments/{experiment_id}/runs",
        headers=admin,
        json={"resume_from": {"run_id": run_id, "round": last}},
    )
    assert resumed.status_code == 202, resumed.text
    new_id = resumed.json()["id"]
    finished = _final(engine, new_id, second_worker, fast_settings)

    assert finished.status == RunStatus.succeeded, _explain(second_worker, fast_settings, new_id)
    assert (finished.resumed_from_run_id, finished.resumed_from_round) == (run_id, last)
    assert _rounds(engine, new_id) == [last + 1, last + 2]
    assert _rounds(engine, run_id) == done  # the failed run's rounds stay as they were


def _events(engine: Engine, run_id: int) -> list[str]:
    with Session(engine) as session:
        query = select(RunEvent.message).where(RunEvent.run_id == run_id)
        return list(session.exec(query.order_by(col(RunEvent.id))))


def _warm_parent(engine: Engine, run_id: int) -> int | None:
    """The warm process the run's federation was forked from, as its first event names it."""
    marker = ", forked from warm process "
    ready = next((m for m in _events(engine, run_id) if marker in m), None)
    return int(ready.split(marker)[1].split()[0]) if ready else None


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_runs_fork_from_the_warm_process_which_outlives_a_crashed_federation(
    fast_settings: Settings,
    engine: Engine,
    start_worker,
    experiment_id: int,
    client,
    admin: dict[str, str],
) -> None:
    """The warm path is the one taken, its clients are forked processes, and a federation
    killed mid-run fails its run alone: the worker and its warm process serve the next run."""
    worker = start_worker()
    run_id, pid = _launch_long_run(client, admin, experiment_id, worker)
    wait_for(lambda: _rounds(engine, run_id), RUN_TIMEOUT_S, "a first round")

    warm_pid = _warm_parent(engine, run_id)
    assert warm_pid is not None, _explain(worker, fast_settings, run_id)
    assert warm_pid != worker.pid
    assert "multiprocessing.forkserver" in _cmdline(warm_pid)
    assert int(Path(f"/proc/{warm_pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == (
        worker.pid
    )
    assert "clients served by 2 forked processes" in _events(engine, run_id)
    assert os.getpgid(pid) == pid  # a process group of its own

    os.kill(pid, signal.SIGKILL)  # a crash of the federation process

    crashed = _final(engine, run_id, worker, fast_settings)
    assert crashed.status == RunStatus.failed
    assert crashed.error is not None and "killed by SIGKILL" in crashed.error
    wait_for(lambda: not _group_alive(pid), 30, "the crashed federation's client processes")
    assert worker.process is not None and worker.process.poll() is None
    assert Path(f"/proc/{warm_pid}").exists()

    client.patch(f"/api/v1/experiments/{experiment_id}", headers=admin, json={"num_rounds": 1})
    next_id = _launch(client, admin, experiment_id)
    finished = _final(engine, next_id, worker, fast_settings)
    assert finished.status == RunStatus.succeeded, _explain(worker, fast_settings, next_id)
    assert _warm_parent(engine, next_id) == warm_pid


@pytest.mark.timeout(600)  # the slow path: minutes on a loaded machine
def test_without_warm_start_a_fresh_process_runs_the_clients_on_ray(
    fast_settings: Settings,
    engine: Engine,
    experiment_id: int,
    client,
    admin: dict[str, str],
    tmp_path: Path,
) -> None:
    """FEDVLA_WARM_START=false: the engine as before, a new interpreter and Ray actors."""
    cold = fast_settings.model_copy(update={"warm_start": False})
    worker = WorkerProcess(cold, engine, tmp_path).start()
    try:
        client.patch(f"/api/v1/experiments/{experiment_id}", headers=admin, json={"num_rounds": 1})
        run_id = _launch(client, admin, experiment_id)
        wait_for(lambda: _run(engine, run_id).status.is_final, 500, f"run {run_id} to finish")
        finished = _run(engine, run_id)
    finally:
        worker.stop()
    assert finished.status == RunStatus.succeeded, _explain(worker, cold, run_id)
    assert _warm_parent(engine, run_id) is None
    assert not any("forked processes" in message for message in _events(engine, run_id))
    with Session(engine) as session:
        log_path = run_files.run_dir_of(session, cold, run_id) / "federation.log"
    log = log_path.read_text(errors="replace")
    assert "Ray" in log
