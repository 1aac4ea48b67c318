"""Fast start: from launching a run to its first finished round, on the embedded default.

A real worker (`python -m fedvla.orchestration.main`, as `fedvla serve` starts it; SQLite database
and broker, no Redis) runs the tiny policy with 2 simulated clients, 1 round of 2 local steps. Each
run is launched through the REST API once the previous one ended, and timed from the API's own
timestamps: the run's created_at (when it was queued) to the created_at of its round 1 RoundMetric
(the first round in which the clients trained; round 0 evaluates the initial policy and is reported
as well). The phases come from the run's events.

Both paths in the same run: `warm` (FEDVLA_WARM_START=true: the worker's warm process forks the
federation with torch, lerobot and Flower already imported, and Ray's client actors are started
ahead) and `cold` (false: a fresh Python process imports everything and starts Ray per run).
Target: warm median < 10 s. Writes bench/results/fast_start.{json,md}.

    .venv/bin/python bench/fast_start.py [--runs 5] [--cold-runs N] [--modes warm,cold] [--quick]
"""

import shutil
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from common import (
    Recorder,
    aware,
    bench_parser,
    load_average,
    markdown_table,
    median,
    wait_until,
)
from fastapi.testclient import TestClient
from seeded import seed_database
from sqlmodel import Session, col, select

from fedvla.core.config import Settings
from fedvla.core.models import RoundMetric, Run, RunEvent, WorkerNode
from fedvla.orchestration.main import start_local_worker
from fedvla.orchestration.warm import READY_MESSAGE
from fedvla.web.main import create_app
from tests.orchestration.conftest import tiny_experiment_fields

COMMAND = ".venv/bin/python bench/fast_start.py"
TARGET_S = 10.0
RUN_TIMEOUT_S = 900.0
"""The cold path took over 5 minutes a run at load 20 on 2 CPUs."""


def prepare_assets(root: Path) -> Path:
    """The tiny VLM and a small synthetic dataset, generated once for every mode."""
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
    from fedvla.engine.policy.tiny import tiny_vlm_dir

    tiny_vlm_dir(root / "data")
    generate_dataset(root / "synthetic", SyntheticSpec(episodes=5, frames_per_episode=16))
    return root


def measure(mode: str, runs: int, assets: Path, workdir: Path) -> dict[str, Any]:
    data_dir = workdir / mode / "data"
    shutil.copytree(assets / "data", data_dir)
    settings = Settings(
        environment="test",
        data_dir=data_dir,
        gpu_queue=f"bench-{uuid.uuid4().hex[:6]}",
        warm_start=mode == "warm",
    )
    dataset = {"repo_id": "local/synthetic", "root": str(assets / "synthetic")}
    fields = tiny_experiment_fields(
        name="fast-start",
        num_rounds=1,
        partition={"dataset": dataset, "num_clients": 2, "holdout_episodes": 1},
    )
    seeded = seed_database(settings, fields)
    engine, headers = seeded.engine, seeded.headers
    worker_name = f"{settings.gpu_queue}@bench"
    worker_log = workdir / mode / "worker.log"
    worker = start_local_worker(settings, worker_name, str(worker_log))
    samples: list[dict[str, Any]] = []
    try:
        wait_until(lambda: _registered(engine, worker_name), 120, "the worker to register")
        if mode == "warm":
            wait_until(lambda: READY_MESSAGE in worker_log.read_text(), 180, "the warm process")
        time.sleep(2.0)  # let the worker finish connecting to the broker
        with TestClient(create_app(settings)) as client:
            for _ in range(runs):
                load = load_average()
                runs_url = f"/api/v1/experiments/{seeded.experiment_id}/runs"
                answer = client.post(runs_url, headers=headers)
                answer.raise_for_status()
                run_id = answer.json()["id"]
                wait_until(lambda id=run_id: _final(engine, id), RUN_TIMEOUT_S, f"run {run_id}")
                sample = _sample(engine, run_id)
                sample["load_average"] = load
                samples.append(sample)
                print(
                    f"{mode} run {run_id}: {sample['status']}, first round "
                    f"{sample['first_round_s']} s (round 0 at {sample['round_0_s']} s), "
                    f"load {load[0]}"
                )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        engine.dispose()
    firsts = [s["first_round_s"] for s in samples if s["first_round_s"] is not None]
    return {
        "mode": mode,
        "runs": runs,
        "samples": samples,
        "first_round_median_s": round(median(firsts), 2) if firsts else None,
        "first_round_min_s": min(firsts, default=None),
        "first_round_max_s": max(firsts, default=None),
        "all_succeeded": all(s["status"] == "succeeded" for s in samples),
    }


def _registered(engine: Any, name: str) -> bool:
    with Session(engine) as session:
        return session.exec(select(WorkerNode).where(WorkerNode.name == name)).first() is not None


def _final(engine: Any, run_id: int) -> bool:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        return run is not None and run.status.is_final


def _sample(engine: Any, run_id: int) -> dict[str, Any]:
    """Seconds from the run's creation to each of its rounds and events."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        created = aware(run.created_at)
        rounds = {
            metric.round: aware(metric.created_at)
            for metric in session.exec(select(RoundMetric).where(RoundMetric.run_id == run_id))
        }
        events = session.exec(
            select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.id))
        ).all()

        def since(moment: datetime | None) -> float | None:
            return round((moment - created).total_seconds(), 2) if moment else None

        return {
            "run_id": run_id,
            "status": str(run.status),
            "claimed_s": since(aware(run.started_at) if run.started_at else None),
            "round_0_s": since(rounds.get(0)),
            "first_round_s": since(rounds.get(1)),
            "finished_s": since(aware(run.finished_at) if run.finished_at else None),
            "events": [
                [since(aware(event.created_at)), event.kind, event.message[:120]]
                for event in events
            ],
        }


def main() -> None:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default="warm,cold")
    parser.add_argument(
        "--cold-runs", type=int, help="runs of the cold path (default --runs): minutes each"
    )
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    recorder = Recorder(
        "fast_start",
        "How long from launching a tiny 2-client run (embedded default) to its first finished "
        "round, with the warm path and with a cold process per run?",
        COMMAND
        + (
            " --quick"
            if args.quick
            else f" --runs {runs} --cold-runs {args.cold_runs or runs} --modes {args.modes}"
        ),
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        assets = prepare_assets(workdir / "assets")
        for mode in args.modes.split(","):
            count = args.cold_runs if mode == "cold" and args.cold_runs and not args.quick else runs
            results.append(measure(mode, count, assets, workdir))
    rows = [
        [
            result["mode"],
            result["runs"],
            result["first_round_median_s"],
            f"{result['first_round_min_s']}-{result['first_round_max_s']}",
            median([s["round_0_s"] for s in result["samples"] if s["round_0_s"] is not None]),
            ", ".join(str(s["load_average"][0]) for s in result["samples"]),
            result["first_round_median_s"] is not None
            and result["first_round_median_s"] < TARGET_S,
        ]
        for result in results
    ]
    table = markdown_table(
        [
            "path",
            "runs",
            "launch to round 1, median (s)",
            "min-max (s)",
            "launch to round 0, median (s)",
            "load average at each launch",
            f"< {TARGET_S:.0f} s",
        ],
        rows,
    )
    recorder.write({"target_s": TARGET_S, "results": results}, table, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
