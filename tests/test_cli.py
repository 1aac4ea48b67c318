"""The ``fedvla`` command: database, tokens and a real ``serve``."""

import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from click.testing import Result
from sqlmodel import Session, select
from typer.testing import CliRunner

from fedvla.cli.main import cli
from fedvla.core.db import make_engine
from fedvla.core.models import ApiToken, Role
from fedvla.core.security import hash_token
from tests.factories import make_site
from tests.test_migrations import empty_database_url  # noqa: F401  (fixture)

FEDVLA = str(Path(sys.executable).parent / "fedvla")


def _invoke(database_url: str, tmp_path: Path, *args: str) -> Result:
    env = {"FEDVLA_DATABASE_URL": database_url, "FEDVLA_DATA_DIR": str(tmp_path / "data")}
    return CliRunner().invoke(cli, list(args), env=env)


def test_db_upgrade_creates_the_schema(empty_database_url: str, tmp_path: Path) -> None:  # noqa: F811
    result = _invoke(empty_database_url, tmp_path, "db", "upgrade")

    assert result.exit_code == 0, result.output
    assert "Database upgraded to head" in result.output
    engine = make_engine(empty_database_url)
    try:
        with Session(engine) as session:
            assert session.exec(select(ApiToken)).all() == []
    finally:
        engine.dispose()


def test_token_create_list_revoke(database_url: str, tmp_path: Path) -> None:
    created = _invoke(database_url, tmp_path, "token", "create", "ci", "--role", "viewer")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("fvla_")

    listed = _invoke(database_url, tmp_path, "token", "list")
    assert listed.exit_code == 0
    row = next(line for line in listed.stdout.splitlines() if " ci " in line)
    assert "viewer" in row and "live" in row and secret not in listed.stdout

    revoked = _invoke(database_url, tmp_path, "token", "revoke", "ci")
    assert revoked.exit_code == 0
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            token = session.exec(select(ApiToken).where(ApiToken.name == "ci")).one()
            assert token.revoked
            assert token.token_hash == hash_token(secret)
    finally:
        engine.dispose()


def test_operator_token_for_a_site(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            site_id = make_site(session).id
        result = _invoke(
            database_url, tmp_path, "token", "create", "lab", "--role", "operator",
            "--site", str(site_id),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        with Session(engine) as session:
            token = session.exec(select(ApiToken).where(ApiToken.name == "lab")).one()
            assert (token.role, token.site_id) == (Role.operator, site_id)
    finally:
        engine.dispose()


def test_operator_token_without_a_site_is_an_enrolment_token(
    database_url: str, tmp_path: Path
) -> None:
    result = _invoke(database_url, tmp_path, "token", "create", "lab-b", "--role", "operator")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("fvla_")
    assert "may register one site" in result.stderr
    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            token = session.exec(select(ApiToken).where(ApiToken.name == "lab-b")).one()
            assert (token.role, token.site_id) == (Role.operator, None)
            assert token.token_hash == hash_token(result.stdout.strip())
    finally:
        engine.dispose()


def test_ensure_admin_prints_a_secret_only_the_first_time(
    database_url: str, tmp_path: Path
) -> None:
    first = _invoke(database_url, tmp_path, "token", "ensure-admin")
    second = _invoke(database_url, tmp_path, "token", "ensure-admin")

    assert first.exit_code == second.exit_code == 0
    assert "fvla_" in first.stdout
    assert "fvla_" not in second.stdout
    assert "exists already" in second.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("token", "create", "x", "--role", "viewer", "--site", "1"), "only operator tokens"),
        (("token", "create", "x", "--role", "operator", "--site", "999"), "no site with id 999"),
        (("token", "revoke", "nobody"), "Token not found"),
    ],
)
def test_bad_arguments_are_messages_not_tracebacks(
    database_url: str, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = _invoke(database_url, tmp_path, *args)

    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_duplicate_token_name_is_a_message(database_url: str, tmp_path: Path) -> None:
    _invoke(database_url, tmp_path, "token", "create", "twice", "--role", "viewer")

    result = _invoke(database_url, tmp_path, "token", "create", "twice", "--role", "viewer")

    assert result.exit_code == 2
    assert "A token named 'twice' already exists" in result.stderr


def test_unmigrated_database_and_bad_settings_are_messages(tmp_path: Path) -> None:
    unmigrated = _invoke(f"sqlite:///{tmp_path / 'new.db'}", tmp_path, "token", "list")
    env = {"FEDVLA_DATA_DIR": str(tmp_path), "FEDVLA_PORT": "not-a-port"}
    bad_setting = CliRunner().invoke(cli, ["token", "list"], env=env)

    assert unmigrated.exit_code == 2
    assert "fedvla db upgrade" in unmigrated.stderr
    assert bad_setting.exit_code == 2
    assert "port" in bad_setting.stderr
    assert "Traceback" not in unmigrated.output + bad_setting.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_served(url: str, process: subprocess.Popen[bytes]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "fedvla serve exited"
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered at {url}")


def _serve_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "FEDVLA_DATA_DIR": str(tmp_path / "data"), "FEDVLA_ENVIRONMENT": "test"}
    for name in ("FEDVLA_DATABASE_URL", "FEDVLA_BROKER_URL", "FEDVLA_REDIS_URL"):
        env.pop(name, None)
    return env


def _fedvla(*args: str, env: dict[str, str], cwd: Path) -> str:
    """Runs the installed ``fedvla`` console script; its stdout."""
    done = subprocess.run(
        [FEDVLA, *args], env=env, cwd=cwd, check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.mark.slow
def test_serve_really_serves(tmp_path: Path) -> None:
    env = _serve_env(tmp_path)
    _fedvla("db", "upgrade", env=env, cwd=tmp_path)
    port = _free_port()
    process = subprocess.Popen(
        [FEDVLA, "serve", "--port", str(port), "--no-worker"], env=env, cwd=tmp_path
    )
    try:
        health = _wait_until_served(f"http://127.0.0.1:{port}/api/v1/health", process)
        docs = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5)
        anonymous = httpx.get(f"http://127.0.0.1:{port}/api/v1/experiments", timeout=5)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)

    assert health.status_code == 200, health.text
    assert health.json()["database"]["ok"] and health.json()["broker"]["ok"]
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert anonymous.status_code == 401
    assert process.returncode == 0


def test_serve_keeps_its_startup_objects_out_of_full_collections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection once scanned every module and route the server had built, about once a
    second under load, stalling all requests meanwhile."""
    frozen_when_serving: list[int] = []
    monkeypatch.setattr(
        "uvicorn.run", lambda *_args, **_kwargs: frozen_when_serving.append(gc.get_freeze_count())
    )
    frozen_before = gc.get_freeze_count()
    try:
        result = CliRunner().invoke(cli, ["serve", "--no-worker"], env=_serve_env(tmp_path))
    finally:
        gc.unfreeze()

    assert result.exit_code == 0, result.output
    assert frozen_when_serving and frozen_when_serving[0] > frozen_before + 10_000


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_serve_starts_a_local_worker_and_stops_it(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    """Ctrl-C or a service manager's SIGTERM: the worker (and whatever it started) goes too."""
    env = _serve_env(tmp_path)
    _fedvla("db", "upgrade", env=env, cwd=tmp_path)
    secret = _fedvla("token", "ensure-admin", env=env, cwd=tmp_path).split()[-1]
    port = _free_port()
    process = subprocess.Popen([FEDVLA, "serve", "--port", str(port)], env=env, cwd=tmp_path)
    workers_url = f"http://127.0.0.1:{port}/api/v1/workers"
    try:
        _wait_until_served(f"http://127.0.0.1:{port}/api/v1/health", process)
        children = psutil.Process(process.pid).children(recursive=True)
        deadline = time.monotonic() + 120
        registered: list[dict[str, object]] = []
        while not registered and time.monotonic() < deadline:
            response = httpx.get(workers_url, headers={"Authorization": f"Bearer {secret}"})
            registered = response.json()["data"]
            time.sleep(0.5)
    finally:
        process.send_signal(stop_signal)
        process.wait(timeout=60)

    assert len(registered) == 1, "the local worker never registered"
    assert children, "serve started no worker process"
    _gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], "the local worker outlived fedvla serve"
    assert process.returncode == 0
