"""Worker registration and heartbeats; checkpoint rows from the reporter and their downloads."""

import hashlib
import io
import json
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import save_file
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.models import Checkpoint, RunEvent, RunStatus, WorkerNode, utcnow
from fedvla.core.services import run_files, runs
from fedvla.core.services.events import EventPublisher
from fedvla.engine.federation.reporter import CheckpointReport, RoundReport
from fedvla.orchestration.db_reporter import DbReporter
from fedvla.orchestration.dispatch import run_sender
from fedvla.orchestration.registry import HeartbeatThread, detect_gpus, register_worker
from tests.orchestration.conftest import wait_for

NO_REDIS = EventPublisher("")


def test_a_worker_registers_beats_and_goes_offline(
    client: TestClient, engine: Engine, fast_settings: Settings, viewer: dict[str, str]
) -> None:
    register_worker(engine, fast_settings, "gpu@lab-a")
    register_worker(engine, fast_settings, "gpu@lab-b")
    with Session(engine) as session:
        stale = utcnow() - timedelta(seconds=fast_settings.lost_after_s + 1)
        session.execute(
            update(WorkerNode).where(col(WorkerNode.name) == "gpu@lab-b").values(heartbeat_at=stale)
        )
        session.commit()

    assert client.get("/api/v1/workers").status_code == 401
    listed = client.get("/api/v1/workers", headers=viewer).json()

    assert listed["count"] == 2
    by_name = {worker["name"]: worker for worker in listed["data"]}
    assert by_name["gpu@lab-a"]["online"] is True
    assert by_name["gpu@lab-b"]["online"] is False
    assert by_name["gpu@lab-a"]["queue"] == fast_settings.gpu_queue
    assert by_name["gpu@lab-a"]["gpus"] == detect_gpus()

    HeartbeatThread(engine, fast_settings, "gpu@lab-b").beat()
    again = client.get("/api/v1/workers", headers=viewer).json()
    assert all(worker["online"] for worker in again["data"])


def test_the_heartbeat_loop_fails_runs_of_lost_workers(
    engine: Engine, fast_settings: Settings, make_experiment
) -> None:
    experiment = make_experiment()
    with Session(engine) as session:
        run = runs.launch_run(
            session, run_sender(fast_settings), NO_REDIS, experiment_id=experiment.id, actor="t"
        )
        run_id = run.id
        assert run_id is not None
        runs.claim_run(session, NO_REDIS, run_id, "gpu@gone")
    register_worker(engine, fast_settings, "gpu@alive")
    beats = HeartbeatThread(engine, fast_settings, "gpu@alive")

    assert beats.beat() == []  # its heartbeat is fresh
    with Session(engine) as session:
        stale = utcnow() - timedelta(seconds=fast_settings.lost_after_s + 1)
        session.execute(
            update(runs.Run).where(col(runs.Run.id) == run_id).values(heartbeat_at=stale)
        )
        session.commit()
    assert beats.beat() == [run_id]
    assert beats.beat() == []
    with Session(engine) as session:
        assert runs.run_status(session, run_id) == RunStatus.failed


def _write_checkpoint(folder: Path) -> str:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"type": "smolvla"}))
    import numpy as np

    save_file({"weight": np.arange(50_000, dtype=np.float32)}, str(folder / "model.safetensors"))
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture
def run_with_checkpoints(
    client: TestClient,
    engine: Engine,
    fast_settings: Settings,
    admin: dict[str, str],
    make_experiment,
) -> tuple[int, Path, str]:
    run_id = client.post(f"/api/v1/experiments/{make_experiment().id}/runs", headers=admin).json()[
        "id"
    ]
    with Session(engine) as session:
        runs.claim_run(session, NO_REDIS, run_id, "gpu@test")
        run_dir = run_files.run_dir_of(session, fast_settings, run_id)
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    folders = {}
    for round in (1, 2):
        folder = run_dir / f"round_{round}" / "pretrained_model"
        digest = _write_checkpoint(folder)
        reporter.checkpoint_saved(
            CheckpointReport(round, str(folder), digest, 200_080, 1.0 / round)
        )
        folders[round] = (folder, digest)
    reporter.checkpoint_saved(CheckpointReport(2, str(folders[2][0]), folders[2][1], 200_080, 0.4))
    reporter.checkpoint_removed(1)
    reporter.close()
    return run_id, *folders[2]


def test_checkpoints_listed_and_downloaded(
    client: TestClient, engine: Engine, viewer: dict[str, str], run_with_checkpoints
) -> None:
    run_id, _folder, weights_digest = run_with_checkpoints

    listed = client.get(f"/api/v1/runs/{run_id}/checkpoints", headers=viewer).json()
    assert [(c["round"], c["eval_loss"]) for c in listed["data"]] == [(2, 0.4)]  # upserted, 1 gone

    url = f"/api/v1/runs/{run_id}/checkpoints/2/archive"
    whole = client.get(url, headers=viewer)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "application/x-tar"
    assert whole.headers["accept-ranges"] == "bytes"
    assert f"run-{run_id}-round-2-pretrained_model.tar" in whole.headers["content-disposition"]
    digest = whole.headers["x-checksum-sha256"]
    assert hashlib.sha256(whole.content).hexdigest() == digest
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as tar:
        assert sorted(tar.getnames()) == [
            "pretrained_model/config.json",
            "pretrained_model/model.safetensors",
        ]
        weights = tar.extractfile("pretrained_model/model.safetensors")
        assert weights is not None
        assert hashlib.sha256(weights.read()).hexdigest() == weights_digest

    resumed = client.get(url, headers={**viewer, "Range": "bytes=1000-"})
    assert resumed.status_code == 206
    assert (
        resumed.headers["content-range"]
        == f"bytes 1000-{len(whole.content) - 1}/{len(whole.content)}"
    )
    assert whole.content[:1000] + resumed.content == whole.content
    # The archive is built once: a second request serves the same bytes and digest.
    assert client.get(url, headers=viewer).headers["x-checksum-sha256"] == digest
    past_end = client.get(url, headers={**viewer, "Range": f"bytes={len(whole.content) + 5}-"})
    assert past_end.status_code == 416

    single = client.get(f"/api/v1/runs/{run_id}/checkpoints/2/model.safetensors", headers=viewer)
    assert hashlib.sha256(single.content).hexdigest() == weights_digest
    assert single.headers["x-checksum-sha256"] == weights_digest


def test_download_errors(
    client: TestClient, engine: Engine, viewer: dict[str, str], run_with_checkpoints
) -> None:
    run_id, folder, _digest = run_with_checkpoints

    missing_round = client.get(f"/api/v1/runs/{run_id}/checkpoints/1/archive", headers=viewer)
    assert (missing_round.status_code, missing_round.json()["detail"]) == (
        404,
        "Checkpoint not found",
    )
    assert client.get("/api/v1/runs/999/checkpoints", headers=viewer).status_code == 404
    assert client.get(f"/api/v1/runs/{run_id}/checkpoints/2/archive").status_code == 401
    (folder / "model.safetensors").unlink()
    gone = client.get(f"/api/v1/runs/{run_id}/checkpoints/2/model.safetensors", headers=viewer)
    assert (gone.status_code, gone.json()["detail"]) == (
        410,
        "The checkpoint's files are no longer on disk (pretrained_model)",
    )
    with Session(engine) as session:
        assert session.exec(select(Checkpoint).where(Checkpoint.run_id == run_id)).one()


def test_the_web_app_fails_lost_runs_in_the_background(
    client: TestClient,
    engine: Engine,
    fast_settings: Settings,
    admin: dict[str, str],
    make_experiment,
) -> None:
    """No worker is alive and nobody reads the run: the app's own reaper still fails it."""
    run_id = client.post(f"/api/v1/experiments/{make_experiment().id}/runs", headers=admin).json()[
        "id"
    ]
    with Session(engine) as session:
        runs.claim_run(session, NO_REDIS, run_id, "gpu@gone")
        stale = utcnow() - timedelta(seconds=fast_settings.lost_after_s + 1)
        session.execute(
            update(runs.Run).where(col(runs.Run.id) == run_id).values(heartbeat_at=stale)
        )
        session.commit()

    def failed() -> bool:
        with Session(engine) as session:
            return runs.run_status(session, run_id) == RunStatus.failed

    wait_for(failed, 30, "the background reaper")


def _events(client: TestClient, headers: dict[str, str], run_id: int) -> list[dict]:
    url = f"/api/v1/runs/{run_id}/events.json?limit=1000"
    return client.get(url, headers=headers).json()["data"]


@pytest.mark.parametrize("endpoint", ["model.safetensors", "archive"])
def test_corrupt_weights_are_refused_and_reported_on_the_run(
    client: TestClient, viewer: dict[str, str], run_with_checkpoints, endpoint: str
) -> None:
    """Weights whose bytes no longer have the recorded sha256: never served, never packed."""
    run_id, folder, weights_digest = run_with_checkpoints
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte, same size
    weights.write_bytes(bytes(data))
    url = f"/api/v1/runs/{run_id}/checkpoints/2/{endpoint}"

    first = client.get(url, headers=viewer)
    again = client.get(url, headers=viewer)

    for answer in (first, again):
        assert (answer.status_code, answer.json()["detail"]) == (
            410,
            "The checkpoint's model.safetensors no longer matches its recorded sha256 (corrupt)",
        )
        assert "x-checksum-sha256" not in answer.headers
    assert not folder.with_name("pretrained_model.tar").exists()  # nothing packed
    reports = [e for e in _events(client, viewer, run_id) if e["data"].get("corrupt")]
    assert len(reports) == 1  # said once, not per download
    assert reports[0]["kind"] == "checkpoint"
    assert reports[0]["message"].startswith("checkpoint of round 2 is corrupt on disk")
    assert reports[0]["data"]["expected_sha256"] == weights_digest
    assert reports[0]["data"]["actual_sha256"] == hashlib.sha256(data).hexdigest()
    assert str(folder) not in reports[0]["message"]


def test_weights_corrupted_after_the_archive_was_built_are_refused(
    client: TestClient, viewer: dict[str, str], run_with_checkpoints
) -> None:
    run_id, folder, _digest = run_with_checkpoints
    url = f"/api/v1/runs/{run_id}/checkpoints/2/archive"
    assert client.get(url, headers=viewer).status_code == 200
    (folder / "model.safetensors").write_bytes(b"not the weights")

    assert client.get(url, headers=viewer).status_code == 410


def test_a_damaged_cached_archive_is_rebuilt_from_the_verified_weights(
    client: TestClient, viewer: dict[str, str], run_with_checkpoints
) -> None:
    run_id, folder, _weights_digest = run_with_checkpoints
    url = f"/api/v1/runs/{run_id}/checkpoints/2/archive"
    built = client.get(url, headers=viewer)
    archive = folder.with_name("pretrained_model.tar")
    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    archive.write_bytes(bytes(damaged))

    served = client.get(url, headers=viewer)

    assert served.status_code == 200
    assert served.content == built.content
    assert hashlib.sha256(served.content).hexdigest() == served.headers["x-checksum-sha256"]


def test_deleted_weights_are_reported_on_the_run(
    client: TestClient, viewer: dict[str, str], run_with_checkpoints
) -> None:
    run_id, folder, _digest = run_with_checkpoints
    (folder / "model.safetensors").unlink()

    for endpoint in ("archive", "model.safetensors"):
        gone = client.get(f"/api/v1/runs/{run_id}/checkpoints/2/{endpoint}", headers=viewer)
        assert gone.status_code == 410
    reports = [e for e in _events(client, viewer, run_id) if e["data"].get("missing")]
    assert [e["message"] for e in reports] == [
        "checkpoint of round 2 is missing on disk: its model.safetensors is gone"
    ]


def test_deleting_an_experiment_deletes_its_runs_files_and_no_id_or_folder_comes_back(
    client: TestClient,
    engine: Engine,
    fast_settings: Settings,
    admin: dict[str, str],
    run_with_checkpoints,
    make_experiment,
) -> None:
    run_id, folder, _digest = run_with_checkpoints
    with Session(engine) as session:
        old_run = session.get(runs.Run, run_id)
        assert old_run is not None
        old_dir, experiment_id = (
            run_files.run_dir_of(session, fast_settings, run_id),
            old_run.experiment_id,
        )
    with Session(engine) as session:
        runs.finish_run(session, NO_REDIS, run_id, RunStatus.succeeded)
    assert folder.is_relative_to(old_dir) and old_dir.is_dir()

    deleted = client.delete(f"/api/v1/experiments/{experiment_id}", headers=admin)

    assert deleted.status_code == 204
    assert not old_dir.exists()
    again = make_experiment()
    new_run = client.post(f"/api/v1/experiments/{again.id}/runs", headers=admin).json()
    assert again.id != experiment_id
    assert new_run["id"] != run_id
    with Session(engine) as session:
        assert run_files.run_dir_of(session, fast_settings, new_run["id"]) != old_dir
        assert session.exec(select(Checkpoint).where(Checkpoint.run_id == run_id)).all() == []


def test_a_lost_run_whose_final_round_and_checkpoint_are_committed_succeeded(
    engine: Engine, fast_settings: Settings, run_with_checkpoints
) -> None:
    """The worker died after the federation wrote everything (num_rounds is 2, as is the last
    checkpoint): the heartbeat reaper must not fail the run."""
    run_id, _folder, _digest = run_with_checkpoints
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    for round in (1, 2):
        reporter.round_finished(RoundReport(round, 0.5, 0.4, 1.0, 10, 10, 2, 2, 0, []))
    reporter.close()
    with Session(engine) as session:
        stale = utcnow() - timedelta(seconds=fast_settings.lost_after_s + 1)
        session.execute(
            update(runs.Run).where(col(runs.Run.id) == run_id).values(heartbeat_at=stale)
        )
        session.commit()

    assert HeartbeatThread(engine, fast_settings, "gpu@alive").beat() == [run_id]
    with Session(engine) as session:
        run = session.get(runs.Run, run_id)
        assert run is not None
        assert (run.status, run.error) == (RunStatus.succeeded, None)
        last = session.exec(
            select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.id).desc())
        ).first()
    assert last is not None
    assert last.message == (
        "succeeded: its final round and checkpoint were committed before worker lost: "
        f"no heartbeat for {fast_settings.lost_after_s:.0f} s"
    )


def test_a_lost_run_without_its_final_checkpoint_fails(
    engine: Engine, fast_settings: Settings, run_with_checkpoints
) -> None:
    run_id, _folder, _digest = run_with_checkpoints
    reporter = DbReporter(fast_settings.database_url, "", run_id)
    reporter.round_finished(RoundReport(1, 0.5, 0.4, 1.0, 10, 10, 2, 2, 0, []))
    reporter.close()

    with Session(engine) as session:
        assert runs.finish_run(session, NO_REDIS, run_id, RunStatus.failed, "killed by SIGKILL")
        assert runs.run_status(session, run_id) == RunStatus.failed
