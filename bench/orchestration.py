"""Orchestration: how fast does the coordinator answer, and how fast do live events arrive?

The script starts the real server (`fedvla serve --no-worker`, uvicorn, embedded SQLite default)
in its own process on a fresh data dir, and writes a running run's rows through the engine's
DbReporter (fedvla/orchestration/db_reporter.py): rounds with client metrics, checkpoints, log
lines.
  REST - 50 concurrent clients (httpx, async) each request the run status, rounds and
         checkpoint list endpoints in turn; latency p50/p99 per endpoint, from request sent to
         body read.
  SSE  - 10, then 200 concurrent subscribers on GET /api/v1/runs/{id}/events; once all follow,
         DbReporter writes log events one by one, at irregular gaps; delivery latency =
         received - written (the time taken just before DbReporter.log is called, so the
         database write is included).
         Without Redis (readers poll the table) and with it (FEDVLA_REDIS_URL, db 14).
Targets: REST p99 < 50 ms at 50 concurrent clients; SSE p99 < 500 ms.
(Launch-to-started latency is bench/dispatch_latency.py's.)
Writes bench/results/orchestration.{json,md}.

    .venv/bin/python bench/orchestration.py [--rest-clients 50] [--subscribers 200] [--quick]
"""

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, Recorder, bench_parser, markdown_table, percentile

COMMAND = ".venv/bin/python bench/orchestration.py"
REDIS_URL = "redis://127.0.0.1:6379/14"
REST_TARGET_P99_S = 0.050
SSE_TARGET_P99_S = 0.500
CONNECT_WAIT_S = 45.0
"""How long subscribers get to start following before the events are written anyway."""
FINISH_WAIT_S = 60.0
"""How long after the last event subscribers get to receive everything."""
ENDPOINTS = {
    "run status": "/api/v1/runs/{run_id}",
    "rounds": "/api/v1/runs/{run_id}/rounds",
    "checkpoints": "/api/v1/runs/{run_id}/checkpoints",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_env(data_dir: Path, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FEDVLA_DATA_DIR": str(data_dir),
        "FEDVLA_REDIS_URL": redis_url,
        # No worker sends heartbeats in this benchmark: keep the reaper off the run.
        "FEDVLA_LOST_AFTER_S": "86400",
    }


def prepare(data_dir: Path, redis_url: str, rounds: int, checkpoints: int) -> tuple[int, str]:
    """A migrated database with a running run, its rounds and checkpoints; a viewer token."""
    os.environ.update(server_env(data_dir, redis_url))
    from sqlmodel import Session

    from fedvla.core.config import Settings
    from fedvla.core.db import make_engine
    from fedvla.core.migrate import upgrade_database
    from fedvla.core.models import Role
    from fedvla.core.schemas.experiments import ExperimentCreate
    from fedvla.core.services import experiments, runs, tokens
    from fedvla.core.services.events import EventPublisher
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset
    from fedvla.engine.federation.reporter import CheckpointReport, ClientReport, RoundReport
    from fedvla.orchestration.db_reporter import DbReporter
    from fedvla.orchestration.dispatch import run_sender

    settings = Settings()
    upgrade_database(settings.database_url)
    engine = make_engine(settings.database_url)
    quiet = EventPublisher("")
    # Never read (no worker trains here), but a real dataset: experiments are checked at create.
    dataset = generate_dataset(
        data_dir / "dataset", SyntheticSpec(episodes=3, frames_per_episode=4)
    )
    with Session(engine) as session:
        experiment = experiments.create_experiment(
            session=session,
            data=ExperimentCreate.model_validate(
                {
                    "name": "bench",
                    "policy": "tiny",
                    "num_rounds": rounds,
                    "min_clients": 2,
                    "partition": {
                        "dataset": {"repo_id": "synthetic/so100", "root": str(dataset)},
                        "num_clients": 2,
                    },
                }
            ),
        )
        run = runs.launch_run(
            session,
            run_sender(settings),
            quiet,
            experiment_id=int(experiment.id or 0),
            actor="bench",
        )
        run_id = int(run.id or 0)
        runs.claim_run(session, quiet, run_id, "bench-worker")
        _, secret = tokens.create_token(session=session, name="bench", role=Role.viewer)
    engine.dispose()
    reporter = DbReporter(settings.database_url, "", run_id)
    for number in range(rounds + 1):
        clients = [
            ClientReport(
                client=f"client-{i}",
                site_id=None,
                ok=True,
                train_loss=1.0,
                samples=80,
                episodes=5,
                seconds=3.0,
                bytes_sent=399_553_329,
                bytes_received=399_553_329,
            )
            for i in range(2)
        ]
        reporter.round_finished(
            RoundReport(
                round=number,
                train_loss=1.0,
                eval_loss=1.0,
                duration_s=3.5,
                bytes_sent=2 * 399_553_329,
                bytes_received=2 * 399_553_329,
                clients_sampled=2,
                clients_succeeded=2,
                clients_failed=0,
                clients=clients if number else [],
            )
        )
    for number in range(1, checkpoints + 1):
        reporter.checkpoint_saved(
            CheckpointReport(
                round=number,
                path=str(data_dir / f"ckpt-{number}"),
                sha256="0" * 64,
                size_bytes=1_000_000,
                eval_loss=1.0,
            )
        )
    reporter.close()
    return run_id, secret


class Server:
    """`fedvla serve --no-worker` in its own process, on a free port."""

    def __init__(self, data_dir: Path, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = server_env(data_dir, redis_url)

    def __enter__(self) -> "Server":
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("fedvla")),
                "serve",
                "--no-worker",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            time.sleep(0.2)
        raise RuntimeError("server did not start in 60 s")

    def __exit__(self, *_exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def rest_load(
    url: str, token: str, run_id: int, clients: int, requests_per_client: int
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    latencies: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        for path in ENDPOINTS.values():  # warm up: connections, caches, first imports
            (await http.get(path.format(run_id=run_id))).raise_for_status()

        async def client(index: int) -> None:
            names = list(ENDPOINTS)
            for number in range(requests_per_client):
                name = names[(index + number) % len(names)]
                started = time.perf_counter()
                response = await http.get(ENDPOINTS[name].format(run_id=run_id))
                await response.aread()
                latencies[name].append(time.perf_counter() - started)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - started
    total = sum(len(v) for v in latencies.values())
    return {
        "clients": clients,
        "requests": total,
        "statuses": statuses,
        "requests_per_second": round(total / wall, 1),
        "endpoints": {
            name: {
                "requests": len(values),
                "p50_ms": round(percentile(values, 50) * 1000, 2),
                "p99_ms": round(percentile(values, 99) * 1000, 2),
                "max_ms": round(max(values) * 1000, 2),
            }
            for name, values in latencies.items()
        },
        "all_p99_ms": round(percentile([v for vs in latencies.values() for v in vs], 99) * 1000, 2),
    }


async def sse_fanout(
    url: str,
    token: str,
    run_id: int,
    subscribers: int,
    events: int,
    interval_s: float,
    database_url: str,
    redis_url: str,
) -> dict[str, Any]:
    """Subscribers follow the run; events are written once all of them are connected.

    A server that cannot serve them all is measured too: subscribers not following after
    CONNECT_WAIT_S, failed requests and events not received within FINISH_WAIT_S are counted.
    """
    from fedvla.orchestration.db_reporter import DbReporter

    headers = {"Authorization": f"Bearer {token}"}
    received: list[dict[str, float]] = [{} for _ in range(subscribers)]
    errors: dict[str, int] = {}
    connected = 0
    all_connected = asyncio.Event()
    limits = httpx.Limits(max_connections=subscribers + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(CONNECT_WAIT_S + FINISH_WAIT_S, connect=CONNECT_WAIT_S)
    path = f"/api/v1/runs/{run_id}/events"

    async def follow(index: int, http: httpx.AsyncClient) -> None:
        nonlocal connected
        ready = False
        event_name = data = ""
        async with http.stream("GET", path) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event_name = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif not line and event_name:
                    arrived = time.time()
                    if event_name == "end":
                        return
                    message = json.loads(data)["message"]
                    if message.startswith("bench "):
                        received[index][message] = arrived
                    elif not ready and event_name == "status":
                        ready = True  # the backlog (queued, running) arrived: following live
                        connected += 1
                        if connected == subscribers:
                            all_connected.set()
                    event_name = data = ""

    async def subscriber(index: int, http: httpx.AsyncClient) -> None:
        try:
            await follow(index, http)
        except httpx.HTTPStatusError as error:
            key = f"HTTP {error.response.status_code}"
            errors[key] = errors.get(key, 0) + 1
        except httpx.HTTPError as error:
            errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1

    def write() -> dict[str, float]:
        from sqlmodel import Session

        from fedvla.core.db import make_engine
        from fedvla.core.models import RunStatus
        from fedvla.core.services import runs
        from fedvla.core.services.events import EventPublisher

        reporter = DbReporter(database_url, redis_url, run_id)
        written = {}
        # Irregular gaps (mean interval_s), so that readers polling every 0.5 s do not lock
        # onto the writer's phase.
        pauses = random.Random(0)
        for number in range(events):
            message = f"bench {number}"
            written[message] = time.time()
            reporter.log(message)
            time.sleep(pauses.uniform(0.5 * interval_s, 1.5 * interval_s))
        reporter.close()
        engine = make_engine(database_url)
        with Session(engine) as session:
            runs.finish_run(session, EventPublisher(redis_url), run_id, RunStatus.succeeded)
        engine.dispose()
        return written

    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as http:
        tasks = [asyncio.create_task(subscriber(i, http)) for i in range(subscribers)]
        connect_started = time.perf_counter()
        with contextlib.suppress(TimeoutError):  # measured as it is: fewer following
            await asyncio.wait_for(all_connected.wait(), timeout=CONNECT_WAIT_S)
        connect_s = time.perf_counter() - connect_started
        following = connected
        written = await asyncio.to_thread(write)
        _, pending = await asyncio.wait(tasks, timeout=FINISH_WAIT_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    latencies = [
        got[message] - written[message] for got in received for message in written if message in got
    ]
    missing = subscribers * events - len(latencies)
    return {
        "subscribers": subscribers,
        "following_when_writing": following,
        "events": events,
        "interval_s": interval_s,
        "redis": bool(redis_url),
        "connect_seconds": round(connect_s, 2),
        "errors": errors,
        "still_open_after_wait": len(pending),
        "deliveries": len(latencies),
        "missing": missing,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
    }


def sse_key(case: dict[str, Any]) -> str:
    return f"{'redis' if case['redis'] else 'table'}-{case['subscribers']}"


def sse_met(case: dict[str, Any]) -> bool:
    """Every subscriber got every event, and p99 under the target."""
    p99 = case["p99_ms"]
    return case["missing"] == 0 and p99 is not None and p99 / 1000 < SSE_TARGET_P99_S


def redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except redis.RedisError:
        return False


def sse_case(
    redis_url: str, subscribers: int, events: int, interval_s: float, work: Path
) -> dict[str, Any]:
    data_dir = work / f"sse-{'redis' if redis_url else 'table'}-{subscribers}"
    run_id, token = prepare(data_dir, redis_url, rounds=1, checkpoints=0)
    database_url = f"sqlite:///{data_dir / 'fedvla.db'}"
    with Server(data_dir, redis_url) as server:
        return asyncio.run(
            sse_fanout(
                server.url, token, run_id, subscribers, events, interval_s, database_url, redis_url
            )
        )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rest-clients", type=int, default=50)
    parser.add_argument("--requests-per-client", type=int, default=60)
    parser.add_argument("--subscribers", default="10,200", help="comma-separated subscriber counts")
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between events")
    args = parser.parse_args(argv)
    if args.quick:
        args.rest_clients, args.requests_per_client = 4, 6
        args.subscribers, args.events, args.interval = "4", 3, 0.1
    recorder = Recorder(
        "orchestration",
        "REST latency of the run status, rounds and checkpoint list endpoints under concurrent "
        "clients; SSE delivery latency from event written to received, at fan-out.",
        COMMAND + (" --quick" if args.quick else ""),
    )
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as scratch:
        work = Path(scratch)
        rest_dir = work / "rest"
        run_id, token = prepare(rest_dir, "", rounds=20, checkpoints=3)
        with Server(rest_dir, "") as server:
            rest = asyncio.run(
                rest_load(server.url, token, run_id, args.rest_clients, args.requests_per_client)
            )
        print(json.dumps(rest))
        brokers = [""] + ([REDIS_URL] if redis_available() else [])
        if len(brokers) == 1:
            print(f"Redis at {REDIS_URL} is not reachable: SSE with Redis not measured")
        sse = []
        for count in sorted(int(n) for n in str(args.subscribers).split(",")):
            for redis_url in brokers:
                sse.append(sse_case(redis_url, count, args.events, args.interval, work))
                print(json.dumps(sse[-1]))
    rest_met = rest["all_p99_ms"] / 1000 < REST_TARGET_P99_S
    rows = [
        [
            f"REST {name}",
            f"{rest['clients']} concurrent clients",
            e["requests"],
            e["p50_ms"],
            e["p99_ms"],
            rest_met if name == next(iter(ENDPOINTS)) else "",
        ]
        for name, e in rest["endpoints"].items()
    ]
    rows[0][-1] = f"all endpoints p99 {rest['all_p99_ms']} ms: " + (
        "met" if rest_met else "NOT met"
    )
    for case in sse:
        rows.append(
            [
                "SSE " + ("with Redis" if case["redis"] else "without Redis (table polled)"),
                f"{case['subscribers']} subscribers ({case['following_when_writing']} following, "
                f"errors {case['errors'] or 'none'}, {case['missing']} deliveries missing)",
                case["deliveries"],
                case["p50_ms"],
                case["p99_ms"],
                sse_met(case),
            ]
        )
    table = markdown_table(
        ["what", "load", "samples", "p50 ms", "p99 ms", "target (REST < 50 ms, SSE < 500 ms)"],
        rows,
    )
    table += (
        f"\nREST throughput: {rest['requests_per_second']} requests/s; "
        f"statuses {rest['statuses']}. "
        "Server and load generator share the machine's CPUs.\n"
    )
    recorder.write(
        {
            "rest": rest,
            "sse": sse,
            "target": {
                "rest_p99_ms_max": REST_TARGET_P99_S * 1000,
                "rest_met": rest_met,
                "sse_p99_ms_max": SSE_TARGET_P99_S * 1000,
                "sse_met": {sse_key(c): sse_met(c) for c in sse},
            },
        },
        table,
        out_dir=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
