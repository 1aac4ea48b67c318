"""Dispatch latency: from the launch request to the federation's child process running.

For each broker (the embedded SQLite broker with a SQLite database; Redis with PostgreSQL), a
real worker (`python -m fedvla.orchestration.main`, as `fedvla serve` starts it) is started, then
runs are launched one at a time through the REST API. Each is timed from just before the POST to:
  claimed  - the worker set the run running (Run.started_at);
  started  - the worker started the federation's child process (its "started" event, written
             once the process exists);
  ready    - the child process wrote its first event: Python started, the run's config read,
             before the engine (torch, Flower, lerobot) is imported, so model loading is excluded.
Each run is then cancelled, which stops its child, and the next is launched when the worker is
idle. Results go to bench/results/dispatch_latency.json.

    .venv/bin/python bench/dispatch_latency.py [--runs 10] [--brokers embedded,redis]
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import aware, wait_until
from fastapi.testclient import TestClient
from seeded import seed_database
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedvla.core.config import Settings  # noqa: E402
from fedvla.core.models import Run, RunEvent, WorkerNode  # noqa: E402
from fedvla.orchestration.main import start_local_worker  # noqa: E402
from fedvla.orchestration.warm import READY_MESSAGE  # noqa: E402
from fedvla.web.main import create_app  # noqa: E402

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_BROKER = "redis://127.0.0.1:6379/13"
STARTED = ("federation process ", " started")
READY = ("federation process ", " ready on ")


def _settings(broker: str, workdir: Path) -> Settings:
    common: dict[str, Any] = {
        "environment": "test",
        "data_dir": workdir / "data",
        "gpu_queue": f"bench-{uuid.uuid4().hex[:6]}",
        "cancel_grace_s": 1.0,
    }
    if broker == "embedded":
        return Settings(**common)
    name = f"fedvla_bench_{uuid.uuid4().hex[:8]}"
    with create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(False)
    return Settings(**common, database_url=url, broker_url=REDIS_BROKER)


def _drop(settings: Settings) -> None:
    if settings.is_sqlite:
        return
    name = make_url(settings.database_url).database
    with create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def measure(broker: str, runs: int, workdir: Path) -> dict[str, Any]:
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

    settings = _settings(broker, workdir)
    # A real dataset (experiments are checked at create); each run is cancelled before it trains.
    dataset = generate_dataset(
        workdir / f"{broker}-dataset", SyntheticSpec(episodes=3, frames_per_episode=4)
    )
    seeded = seed_database(
        settings,
        {
            "name": "bench",
            "policy": "tiny",
            "partition": {
                "dataset": {"repo_id": "synthetic/so100", "root": str(dataset)},
                "num_clients": 2,
            },
        },
    )
    engine, headers = seeded.engine, seeded.headers
    worker_name = f"{settings.gpu_queue}@bench"
    worker = start_local_worker(settings, worker_name, str(workdir / f"{broker}-worker.log"))
    samples: list[dict[str, float]] = []
    try:
        wait_until(lambda: _worker_ready(engine, worker_name), 60, "the worker to register")
        worker_log = workdir / f"{broker}-worker.log"
        if settings.warm_start:  # launched sooner, the first run would wait for its imports
            wait_until(lambda: READY_MESSAGE in worker_log.read_text(), 300, "the warm process")
        time.sleep(2.0)  # let the worker finish connecting to the broker
        with TestClient(create_app(settings)) as client:
            for _ in range(runs):
                t0 = datetime.now(UTC)
                runs_url = f"/api/v1/experiments/{seeded.experiment_id}/runs"
                answer = client.post(runs_url, headers=headers)
                answered = datetime.now(UTC)
                answer.raise_for_status()
                run_id = answer.json()["id"]
                ready_at = wait_until(
                    lambda id=run_id: _event_at(engine, id, READY), 60, "child ready"
                )
                started_at = _event_at(engine, run_id, STARTED)
                claimed_at = _started_at(engine, run_id)
                assert started_at is not None
                client.post(f"/api/v1/runs/{run_id}/cancel", headers=headers)
                wait_until(lambda: _worker_idle(engine, worker_name), 60, "the worker to be idle")
                samples.append(
                    {
                        "request_s": (answered - t0).total_seconds(),
                        "claimed_s": (claimed_at - t0).total_seconds(),
                        "started_s": (started_at - t0).total_seconds(),
                        "ready_s": (ready_at - t0).total_seconds(),
                    }
                )
        with Session(engine) as session:
            node = session.exec(select(WorkerNode).where(WorkerNode.name == worker_name)).one()
            gpus = node.gpus
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        engine.dispose()
        _drop(settings)
    return {
        "broker": settings.broker_url.split(":", 1)[0],
        "database": "sqlite" if settings.is_sqlite else "postgresql",
        "runs": runs,
        "worker_gpus": gpus,
        "samples": samples,
        **{key: _summary([s[key] for s in samples]) for key in samples[0]},
    }


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
    }


def _worker_ready(engine: Any, name: str) -> bool:
    with Session(engine) as session:
        return session.exec(select(WorkerNode).where(WorkerNode.name == name)).first() is not None


def _worker_idle(engine: Any, name: str) -> bool:
    with Session(engine) as session:
        node = session.exec(select(WorkerNode).where(WorkerNode.name == name)).one()
        return node.current_run_id is None


def _event_at(engine: Any, run_id: int, marker: tuple[str, str]) -> datetime | None:
    with Session(engine) as session:
        event = session.exec(
            select(RunEvent)
            .where(
                RunEvent.run_id == run_id,
                col(RunEvent.message).startswith(marker[0]),
                col(RunEvent.message).contains(marker[1]),
            )
            .limit(1)
        ).first()
        return aware(event.created_at) if event else None


def _started_at(engine: Any, run_id: int) -> datetime:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None and run.started_at is not None
        return aware(run.started_at)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--brokers", default="embedded,redis")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/dispatch_latency.json")
    args = parser.parse_args()
    results = []
    for broker in args.brokers.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            result = measure(broker, args.runs, Path(workdir))
        results.append(result)
        print(
            f"{broker:9s} median: claimed {result['claimed_s']['median']:.3f} s, "
            f"child started {result['started_s']['median']:.3f} s "
            f"(p90 {result['started_s']['p90']:.3f} s), "
            f"child ready {result['ready_s']['median']:.3f} s "
            f"(p90 {result['ready_s']['p90']:.3f} s)"
        )
    report = {
        "benchmark": "dispatch_latency",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "note": "seconds from the launch request to: the worker claimed the run; the federation "
        "child process started; the child ready (config read, before the engine is imported)",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
