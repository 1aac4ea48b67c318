"""The SuperLink is closed by construction: it binds loopback, and its public front (Caddy)
forwards Flower's Fleet API alone. The probes use only what a startup kit ships (ca.crt)."""

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fastapi.routing import APIRoute
from flwr.proto.control_pb2 import ListNodesRequest
from flwr.supercore.control import ControlHttpClient

from fedvla.core.config import Settings
from fedvla.orchestration.deployment.local_nodes import free_port, start_superlink
from fedvla.sites import fleet_front
from fedvla.sites.superlink import (
    SuperLinkError,
    SuperLinkProcess,
    list_nodes,
    superlink_env,
    tls_files,
)


def _adapted(caddyfile: str, tmp_path: Path) -> dict[str, Any]:
    """The JSON configuration Caddy itself makes of a Caddyfile."""
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    result = subprocess.run(
        ["caddy", "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_caddy_proxies_post_on_exactly_the_fleet_routes_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    from flwr.superlink.routers.fleet.router import router

    settings = Settings(data_dir=tmp_path, superlink_port=19093, fleet_port=19092)

    config = _adapted(fleet_front.caddyfile(settings, tls_files(settings)), tmp_path)

    assert config["admin"] == {"disabled": True}
    (server,) = config["apps"]["http"]["servers"].values()
    assert server["listen"] == ["127.0.0.1:19092"]
    fleet, rest = server["routes"]  # a site without a host name: its routes at the top
    (matcher,) = fleet["match"]
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    assert sorted(matcher["path"]) == sorted(r.path for r in routes)
    assert all(r.methods == {"POST"} for r in routes)
    assert matcher["method"] == ["POST"]
    assert all(p.startswith("/v1/fleet/") for p in matcher["path"])
    proxy = fleet["handle"][0]["routes"][0]["handle"][0]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:19093"}]
    assert proxy["transport"]["tls"]["root_ca_pem_files"] == [
        str(tmp_path / "superlink" / "tls" / "ca.crt")
    ]
    assert "match" not in rest  # everything else
    refusal = rest["handle"][0]["routes"][0]["handle"][0]
    assert (refusal["handler"], refusal["status_code"]) == ("static_response", 404)


def test_the_superlink_may_not_bind_every_interface_nor_share_the_fronts_port() -> None:
    for wildcard in ("0.0.0.0", "::", ""):
        with pytest.raises(ValueError, match="would open the SuperLink's Control API"):
            Settings(superlink_host=wildcard)
    with pytest.raises(ValueError, match="need a port each"):
        Settings(superlink_port=9092, fleet_port=9092)


def test_sites_dial_the_front(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, fleet_host="0.0.0.0", fleet_port=9443)

    assert settings.superlink_address == "0.0.0.0:9443"
    assert Settings(superlink_public_address="fl.example.org:443").superlink_address == (
        "fl.example.org:443"
    )


def test_the_serverapp_gets_only_the_settings_it_reads(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=Path("relative-data"),
        database_url="postgresql://fedvla:pw@db/fedvla",
        secret_key="s" * 40,
        broker_url="redis://broker:6379/0",
        redis_url="redis://redis:6379/1",
        superlink_port=19093,
    )
    base = {"FEDVLA_SECRET_KEY": "s" * 40, "FEDVLA_BROKER_URL": "x", "HOME": "/home/me"}

    env = superlink_env(settings, base)

    assert {k: v for k, v in env.items() if k.startswith("FEDVLA_")} == {
        "FEDVLA_DATA_DIR": str(Path("relative-data").resolve()),
        "FEDVLA_DATABASE_URL": "postgresql+psycopg://fedvla:pw@db/fedvla",
        "FEDVLA_REDIS_URL": "redis://redis:6379/1",
        "FEDVLA_LOADER_WORKERS": "-1",
        "FEDVLA_SUPERLINK_HOST": "127.0.0.1",
        "FEDVLA_SUPERLINK_PORT": "19093",
    }
    assert env["HOME"] == "/home/me"
    # The embedded SQLite database follows the absolute data dir.
    embedded = superlink_env(Settings(data_dir=tmp_path), {})
    assert "FEDVLA_DATABASE_URL" not in embedded
    assert Settings(data_dir=embedded["FEDVLA_DATA_DIR"]).database_url == (
        f"sqlite:///{tmp_path / 'fedvla.db'}"
    )


def test_without_caddy_the_superlink_says_how_to_install_it_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no caddy there
    process = SuperLinkProcess(Settings(data_dir=tmp_path, fleet_port=free_port()))

    with pytest.raises(SuperLinkError, match=r"caddy` is not on PATH.*apt-get install caddy"):
        process.start()
    assert process.process is None


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuperLinkProcess]:
    root = tmp_path_factory.mktemp("closed")
    settings = Settings(
        environment="test",
        data_dir=root / "server",
        database_url=f"sqlite:///{root / 'fedvla.db'}",
        superlink_port=free_port(),
        fleet_port=free_port(),
    )
    os.environ["FEDVLA_SECRET_KEY"] = "a-secret-the-serverapp-must-not-see-" * 2
    try:
        superlink = start_superlink(settings)
    finally:
        del os.environ["FEDVLA_SECRET_KEY"]
    (root / "kit-ca.crt").write_bytes(tls_files(settings).ca_certificate.read_bytes())
    try:
        yield superlink
    finally:
        superlink.stop()


def _public(superlink: SuperLinkProcess) -> httpx.Client:
    """An outsider's client: the public address and the kit's CA, nothing else."""
    settings = superlink.settings
    ca = settings.data_dir.parent / "kit-ca.crt"
    return httpx.Client(
        base_url=f"https://{settings.superlink_address}", verify=str(ca), timeout=10
    )


def _api_paths(prefix: str) -> list[str]:
    """Every route of the SuperLink's app under ``prefix``."""
    from fastapi.routing import iter_route_contexts
    from flwr.superlink.main import create_app

    paths = {c.path for c in iter_route_contexts(create_app().routes)}
    return sorted(p for p in paths if p.startswith(prefix))


@pytest.mark.slow
def test_control_and_serverappio_routes_are_refused_at_the_public_address(
    running: SuperLinkProcess,
) -> None:
    control, runtime = _api_paths("/v1/control/"), _api_paths("/v1/runtime/")
    assert len(control) > 10 and len(runtime) > 10
    with _public(running) as client:
        for path in [*control, *runtime, "/health", "/docs", "/openapi.json"]:
            for method in ("POST", "GET"):
                response = client.request(method, path, content=b"")
                assert response.status_code == 404, (method, path)
                assert response.text == fleet_front.REFUSED_BODY, (method, path)


@pytest.mark.slow
def test_path_tricks_do_not_reach_the_control_api(running: SuperLinkProcess) -> None:
    settings = running.settings
    ca = settings.data_dir.parent / "kit-ca.crt"
    for path in (
        "/v1/fleet/../control/list-nodes",
        "/v1/fleet/%2e%2e/control/list-nodes",
        "/v1/fleet%2f..%2fcontrol/list-nodes",
        "/v1/fleet/pull-messages/../../control/list-nodes",
        "//v1/control/list-nodes",
        "/v1/control/list-nodes?/v1/fleet/pull-messages",
    ):
        result = subprocess.run(
            [
                *("curl", "-s", "--path-as-is", "--cacert", str(ca), "-X", "POST"),
                *("-o", "/dev/null", "-w", "%{http_code}"),
                f"https://{settings.superlink_address}{path}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.stdout in ("400", "404"), (path, result.stdout)


@pytest.mark.slow
def test_flowers_own_control_client_gets_nothing_from_the_public_address(
    running: SuperLinkProcess,
) -> None:
    settings = running.settings
    client = ControlHttpClient.from_server_address(
        settings.superlink_address,
        insecure=False,
        root_certificates=(settings.data_dir.parent / "kit-ca.crt").read_bytes(),
        interceptors=[],
    )
    try:
        with pytest.raises(httpx.HTTPStatusError, match="404"):
            client.ListNodes(ListNodesRequest())
    finally:
        client.close()
    assert list_nodes(settings) == []  # from the coordinator's loopback, it answers


@pytest.mark.slow
def test_the_fleet_api_passes_the_front_to_the_superlink(running: SuperLinkProcess) -> None:
    with _public(running) as client:
        response = client.post(
            "/v1/fleet/pull-messages",
            content=b"",
            headers={"Content-Type": "application/protobuf"},
        )
    # The SuperLink's own answer: this request is no authenticated SuperNode's.
    assert response.status_code == 401, response.text
    assert response.text != fleet_front.REFUSED_BODY


@pytest.mark.slow
def test_the_superlink_listens_on_loopback_only_and_keeps_secrets_from_its_serverapps(
    running: SuperLinkProcess,
) -> None:
    assert running.process is not None and running.front is not None
    settings = running.settings

    def listening(pid: int) -> set[tuple[str, int]]:
        process = psutil.Process(pid)
        return {
            (c.laddr.ip, c.laddr.port)
            for p in (process, *process.children(recursive=True))
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        }

    superlink = listening(running.process.pid)
    assert ("127.0.0.1", settings.superlink_port) in superlink
    assert {ip for ip, _ in superlink} == {"127.0.0.1"}, superlink
    assert listening(running.front.process.pid) == {("127.0.0.1", settings.fleet_port)}  # type: ignore[union-attr]
    environ = psutil.Process(running.process.pid).environ()
    assert "FEDVLA_SECRET_KEY" not in environ
    assert environ["FEDVLA_DATA_DIR"] == str(settings.data_dir.resolve())
