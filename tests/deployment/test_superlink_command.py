"""`fedvla superlink`: the SuperLink runs, and its registered keys follow approvals."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.models import SiteStatus
from fedvla.core.services import sites as site_service
from fedvla.orchestration.deployment.local_nodes import free_port, start_supernode
from fedvla.orchestration.supervisor import child_env
from fedvla.sites import superlink_admin
from fedvla.sites.keys import generate_node_keys
from fedvla.sites.superlink import list_nodes
from fedvla.sites.superlink import log_path as superlink_log_path
from tests.factories import make_site

pytestmark = pytest.mark.slow


def _until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_superlink_command_registers_approved_keys_and_drops_revoked_ones(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        environment="test",
        data_dir=tmp_path / "server",
        database_url=sqlite_url,
        redis_url="",
        superlink_port=free_port(),
        fleet_port=free_port(),
    )
    engine = make_engine(sqlite_url)
    session = Session(engine)
    keys = generate_node_keys(tmp_path / "keys")
    site = make_site(session, public_key=keys.public_pem.read_text())
    command = subprocess.Popen(
        [str(Path(sys.executable).parent / "fedvla"), "superlink", "--sync-every", "0.5"],
        env=child_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    node: subprocess.Popen[bytes] | None = None
    try:

        def registered() -> set[str]:
            return {n.name for n in list_nodes(settings) if n.status != "unregistered"}

        _until(lambda: _answers(settings), "the SuperLink")
        assert registered() == set()  # pending: not admitted
        site_service.set_status(
            session=session, site=site, status=SiteStatus.approved, actor="t", reason=""
        )
        _until(lambda: registered() == {site.name}, "the approved site's key")
        node = start_supernode(
            settings,
            site,
            key=keys.private_key,
            ca=settings.superlink_dir / "tls" / "ca.crt",
            folder=tmp_path / "site",
            data_dir=tmp_path / "site-data",
        )
        _until(lambda: superlink_admin.site_node(settings, site).online, "the node online")
        site_service.set_status(
            session=session, site=site, status=SiteStatus.revoked, actor="t", reason="gone"
        )
        _until(lambda: registered() == set(), "the revoked site's key to go")
        # The node that was online is refused from now on: the SuperLink answers its next call
        # with 401 (its own access log, behind the Fleet front).
        refused = '/v1/fleet/pull-messages HTTP/1.1" 401'
        _until(lambda: refused in superlink_log_path(settings).read_text(), "the node refused")
        assert superlink_admin.site_node(settings, site).online is False
    finally:
        if node is not None:
            os.killpg(node.pid, signal.SIGTERM)
            node.wait(30)
        os.killpg(command.pid, signal.SIGTERM)
        output, _ = command.communicate(timeout=60)
        session.close()
        engine.dispose()
    assert command.returncode == 0, output
    assert f"registered site {site.name!r}" in output
    assert "unregistered node" in output


def _answers(settings: Settings) -> bool:
    from fedvla.sites.superlink import SuperLinkError

    try:
        list_nodes(settings)
    except SuperLinkError:
        return False
    return True


def test_superlink_command_explains_a_port_in_use(sqlite_url: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(
            environment="test",
            data_dir=tmp_path,
            database_url=sqlite_url,
            superlink_port=port,
            fleet_port=free_port(),
        )
        result = subprocess.run(
            [str(Path(sys.executable).parent / "fedvla"), "superlink"],
            env=child_env(settings),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert "Error: flower-superlink exited with" in result.stderr
    assert "Traceback" not in result.stderr


def test_superlink_command_without_caddy_says_how_to_install_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        environment="test", data_dir=tmp_path, database_url=sqlite_url, fleet_port=free_port()
    )
    env = child_env(settings)
    env["PATH"] = str(tmp_path / "bin")  # no caddy, nor anything else, on PATH

    result = subprocess.run(
        [str(Path(sys.executable).parent / "fedvla"), "superlink"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert "Error: `caddy` is not on PATH" in result.stderr
    assert "sudo apt-get install caddy" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "superlink" / "superlink.log").exists()  # nothing started
