"""Schemathesis against a real ``fedvla serve`` on SQLite and PostgreSQL: every phase (examples,
coverage, fuzzing, stateful through the OpenAPI links), as an admin and as a viewer.

The bar: no 5xx, and every answer conforms to the OpenAPI document (status code declared,
content type, headers, body schema). Examples are bounded so a backend takes a few minutes on 2
CPUs; ``FEDVLA_FUZZ_EXAMPLES`` raises the bound for a deeper hunt.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import ApiToken, Role, Run
from fedvla.core.schemas.experiments import EXPERIMENT_EXAMPLE
from fedvla.core.security import hash_token
from tests.api.conftest import declared_statuses
from tests.factories import (
    finish_with_reports,
    make_experiment,
    make_site,
    make_token,
    simulation_body,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SCHEMATHESIS = str(Path(sys.executable).with_name("st"))
FEDVLA = str(Path(sys.executable).with_name("fedvla"))
EXAMPLES = int(os.environ.get("FEDVLA_FUZZ_EXAMPLES", "20"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "use_after_free",
        "ensure_resource_availability",
    ]
)
FUZZ_TOKEN_ID = 1_234_567
"""The fuzzing tokens' ids, far from the small ids the fuzzer tries, so it never revokes them."""

CONFIG = """
[[operations]]
include-name = "GET /api/v1/sites/{site_id}/node"
# No SuperLink runs here: the documented 503 ("does not answer") is the right answer.
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

[[operations]]
include-path-regex = '/checkpoints/\\{round\\}/'
parameters = { run_id = %(run_id)d, round = 1 }
"""


@dataclass
class Served:
    url: str
    admin: str
    viewer: str
    run_id: int
    work_dir: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fuzz_token(session: Session, role: Role, offset: int) -> str:
    secret = make_token(session, role)
    session.execute(
        update(ApiToken)
        .where(col(ApiToken.token_hash) == hash_token(secret))
        .values(id=FUZZ_TOKEN_ID + offset)
    )
    session.commit()
    return secret


def _seed(settings: Settings) -> tuple[str, str, int]:
    """A site, an experiment with a finished run (round, checkpoint, worker); admin and viewer."""
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            make_site(session)
            experiment = make_experiment(session, simulation_body(name="seeded"))
            assert experiment.id is not None
            run = Run(experiment_id=experiment.id, config={})
            session.add(run)
            session.commit()
            assert run.id is not None
            folder = settings.data_dir / "seeded" / "round-1"
            finish_with_reports(session, settings.database_url, run.id, folder)
            admin = _fuzz_token(session, Role.admin, 0)
            viewer = _fuzz_token(session, Role.viewer, 1)
            return admin, viewer, run.id
    finally:
        engine.dispose()


def _caches_with_the_documented_example(root: Path) -> dict[str, str]:
    """Hugging Face caches holding what ExperimentCreate's documented example names (its dataset,
    6 episodes for 2 clients and 4 held out; smolvla_base as the hub cache lays out a download),
    so that the examples phase creates an experiment: the checks at create find them."""
    from fedvla.engine.data.synthetic import SyntheticSpec, generate_dataset

    example = EXPERIMENT_EXAMPLE
    repo_id = example["partition"]["dataset"]["repo_id"]
    generate_dataset(
        root / "lerobot" / repo_id, SyntheticSpec(repo_id=repo_id, episodes=6, frames_per_episode=2)
    )
    revision = "0" * 40
    policy = root / "hf" / "hub" / f"models--{example['policy'].replace('/', '--')}"
    (policy / "refs").mkdir(parents=True)
    (policy / "refs" / "main").write_text(revision)
    (policy / "snapshots" / revision).mkdir(parents=True)
    return {"HF_LEROBOT_HOME": str(root / "lerobot"), "HF_HOME": str(root / "hf")}


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[Served]:
    admin, viewer, run_id = _seed(settings)
    env = {
        **os.environ,
        **_caches_with_the_documented_example(tmp_path / "caches"),
        "FEDVLA_ENVIRONMENT": "test",
        "FEDVLA_DATA_DIR": str(settings.data_dir),
        "FEDVLA_DATABASE_URL": settings.database_url,
        "FEDVLA_BROKER_URL": settings.broker_url,
        "FEDVLA_REDIS_URL": "",
    }
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [FEDVLA, "serve", "--port", str(port), "--no-worker"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, "fedvla serve exited"
            try:
                httpx.get(f"{url}/api/v1/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fedvla serve did not answer"
                time.sleep(0.3)
        yield Served(url, admin, viewer, run_id, tmp_path)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        log.close()


@dataclass
class Fuzzed:
    returncode: int
    output: str
    report: dict[str, Any]
    answered: list[tuple[str, str, int]]
    """Every request it sent: method, path, status."""


def _fuzz(served: Served, token: str, name: str, *options: str) -> Fuzzed:
    report_dir = served.work_dir / name
    config = served.work_dir / "schemathesis.toml"
    config.write_text(CONFIG % {"run_id": served.run_id})
    command = [
        SCHEMATHESIS,
        f"--config-file={config}",
        "run",
        f"{served.url}/openapi.json",
        "--phases=examples,coverage,fuzzing,stateful",
        f"--checks={CHECKS}",
        f"--max-examples={EXAMPLES}",
        "--seed=20261128",
        "--workers=2",
        "--request-timeout=20",
        "--suppress-health-check=all",
        "--report=json,har",
        f"--report-dir={report_dir}",
        "--include-path-regex=^/api/v1/",
        "-H",
        f"Authorization: Bearer {token}",
        *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=served.work_dir)
    output = done.stdout + done.stderr
    reports = {path.name.split("-")[0]: path for path in report_dir.glob("*.json")}
    assert {"json", "har"} <= reports.keys(), output[-5000:]
    answered = [
        (
            entry["request"]["method"],
            httpx.URL(entry["request"]["url"]).path,
            entry["response"]["status"],
        )
        for entry in json.loads(reports["har"].read_text())["log"]["entries"]
    ]
    report = json.loads(reports["json"].read_text())
    return Fuzzed(done.returncode, output, report, answered)


def _check(fuzzed: Fuzzed, served: Served, name: str) -> None:
    statuses = Counter(status for _, _, status in fuzzed.answered)
    print(f"{name}: {fuzzed.report['test_cases']}; {len(fuzzed.answered)} requests {statuses}")
    assert fuzzed.returncode == 0, fuzzed.output[-8000:]
    assert not fuzzed.report["failures"] and not fuzzed.report["errors"], fuzzed.output[-8000:]
    document = httpx.get(f"{served.url}/openapi.json").json()
    undeclared = {
        (method, path, status)
        for method, path, status in fuzzed.answered
        if status not in declared_statuses(document, method, path)
    }
    assert not undeclared


def test_schemathesis_finds_no_server_error_or_contract_violation(served: Served) -> None:
    """A viewer first (reads only, the event stream included: the only run is final, so streams
    end), then an admin over every write, with the stream left out (the runs it launches stay
    queued with no worker, and a stream of a queued run never ends)."""
    viewer = _fuzz(served, served.viewer, "viewer", "--include-method=GET")
    _check(viewer, served, "viewer")
    admin = _fuzz(served, served.admin, "admin", "--exclude-path-regex=/events$")
    _check(admin, served, "admin")

    assert len(viewer.answered) > 1000 and len(admin.answered) > 1000
    assert ("POST", "/api/v1/experiments", 201) in admin.answered
