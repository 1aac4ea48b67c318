"""Our Flower 1.42 SuperLink: its process, its public front, and its Control API as we use it.

flwr 1.42's SuperLink serves the Fleet, Control and ServerAppIo APIs over one HTTPS port
(``--host``/``--port``). It binds FEDVLA_SUPERLINK_HOST (loopback or a private interface) on
FEDVLA_SUPERLINK_PORT, where only the coordinator's processes and the front reach it; sites dial
the front (fedvla.sites.fleet_front: Caddy on FEDVLA_FLEET_HOST:FEDVLA_FLEET_PORT), which
forwards the Fleet API alone. We start it with TLS (certificates from
fedvla.sites.certificates), SuperNode authentication, its state in a database file, and
without runtime dependency installation (no package index at sites or in CI). SuperNodes are
admitted by their registered public keys (``flwr supernode register``'s Control API call, made
here directly).
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flwr.proto.control_pb2 import (
    ListNodesRequest,
    ListRunsRequest,
    RegisterNodeRequest,
    StopRunRequest,
    UnregisterNodeRequest,
)
from flwr.supercore.control import ControlHttpClient

from fedvla.core.config import Settings
from fedvla.sites.certificates import TlsFiles, ensure_tls, server_tls_hosts
from fedvla.sites.fleet_front import FleetFront, FrontError, dial_host

READY_TIMEOUT_S = 60.0


class SuperLinkError(RuntimeError):
    """The SuperLink is unreachable, or refused what we asked."""


@dataclass(frozen=True)
class NodeStatus:
    """One SuperNode as the SuperLink knows it."""

    node_id: int
    name: str
    public_key: str
    status: str  # registered | online | offline | unregistered
    last_activated_at: str
    last_deactivated_at: str
    online_until: float
    heartbeat_interval: float = 0.0

    @property
    def online(self) -> bool:
        return self.status == "online"


def tls_dir(settings: Settings) -> Path:
    return settings.superlink_dir / "tls"


def tls_files(settings: Settings) -> TlsFiles:
    """The SuperLink's CA and server certificate, made if missing."""
    return ensure_tls(tls_dir(settings), server_tls_hosts(settings))


def flwr_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of Flower's processes: the venv's bin first (the SuperLink spawns
    flower-superexec and flwr-serverapp by name) and a FLWR_HOME of our own."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = str(settings.superlink_dir / "flwr-home")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


# What our ServerApp (fedvla.orchestration.deployment.server_app) reads: the database and Redis it
# reports into, the data directory (run files, the CA its Control API client verifies with), the
# SuperLink's own address (its node list), the loader's worker count (server evaluation).
SERVER_APP_SETTINGS = (
    "data_dir",
    "database_url",
    "redis_url",
    "loader_workers",
    "superlink_host",
    "superlink_port",
)


def superlink_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The SuperLink's environment, which its SuperExec and ServerApps inherit: Flower's
    (flwr_env) with FEDVLA_* cut down to SERVER_APP_SETTINGS: no session key, no broker."""
    env = {k: v for k, v in flwr_env(settings, base).items() if not k.startswith("FEDVLA_")}
    for name in SERVER_APP_SETTINGS:
        value = getattr(settings, name)
        # The SuperLink runs in its own directory: relative paths would point elsewhere.
        env[f"FEDVLA_{name.upper()}"] = str(value.resolve() if isinstance(value, Path) else value)
    if settings.database_url == settings.embedded_database_url:
        del env["FEDVLA_DATABASE_URL"]  # the default SQLite file, found from the absolute dir
    return env


def superlink_command(settings: Settings) -> list[str]:
    tls = tls_files(settings)
    return [
        str(Path(sys.executable).parent / "flower-superlink"),
        "--ssl-ca-certfile",
        str(tls.ca_certificate),
        "--ssl-certfile",
        str(tls.server_certificate),
        "--ssl-keyfile",
        str(tls.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--database",
        str(settings.superlink_dir / "state.db"),
        "--host",
        settings.superlink_host,
        "--port",
        str(settings.superlink_port),
    ]


def control_client(settings: Settings) -> ControlHttpClient:
    """A Control API client that verifies the SuperLink with our CA."""
    address = f"{dial_host(settings.superlink_host)}:{settings.superlink_port}"
    return ControlHttpClient.from_server_address(
        address,
        insecure=False,
        # Read, never made here: a client must not race the SuperLink making its CA.
        root_certificates=TlsFiles.in_directory(tls_dir(settings)).ca_certificate.read_bytes(),
        interceptors=[],
    )


def log_path(settings: Settings) -> Path:
    """Where ``fedvla superlink`` writes flower-superlink's output."""
    return settings.superlink_dir / "superlink.log"


class SuperLinkProcess:
    """flower-superlink as a child process, its output in <superlink_dir>/superlink.log, and
    its public front (Caddy) beside it unless FEDVLA_SUPERLINK_FRONT is false."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_path = log_path(settings)
        self.process: subprocess.Popen[bytes] | None = None
        self.front: FleetFront | None = None
        self._log: IO[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        """SuperLinkError, before anything starts, when the front is wanted and Caddy missing."""
        self.settings.superlink_dir.mkdir(parents=True, exist_ok=True)
        command = superlink_command(self.settings)
        if self.settings.superlink_front:
            self.front = FleetFront(self.settings, tls_files(self.settings))
            try:
                self.front.start(flwr_env(self.settings, env))
            except FrontError as error:
                raise SuperLinkError(str(error)) from None
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=self.settings.superlink_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=superlink_env(self.settings, env),
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until the Control API and the front answer; SuperLinkError if a process exits or
        time runs out."""
        deadline = time.monotonic() + timeout_s
        self._wait_control_api(deadline)
        if self.front is not None:
            try:
                self.front.wait_ready(deadline)
            except FrontError as error:
                raise SuperLinkError(str(error)) from None

    def _wait_control_api(self, deadline: float) -> None:
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise SuperLinkError(
                    f"flower-superlink exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                list_nodes(self.settings)
                return
            except SuperLinkError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self, grace_s: float = 10.0) -> None:
        """The front, then SIGTERM to the SuperLink's process group (its SuperExec and
        ServerApps), then KILL."""
        if self.front is not None:
            self.front.stop(grace_s)
        if self.process is not None and self.process.poll() is None:
            pgid = os.getpgid(self.process.pid)
            os.killpg(pgid, 15)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, 9)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _call[T](settings: Settings, what: str, call: Callable[[ControlHttpClient], T]) -> T:
    try:
        client = control_client(settings)
    except OSError as error:
        raise SuperLinkError(f"{what}: {error}") from error
    try:
        return call(client)
    except Exception as error:  # httpx and Flower's own errors: the SuperLink refused or is away
        raise SuperLinkError(f"{what}: {type(error).__name__}: {error}") from error
    finally:
        client.close()


def list_nodes(settings: Settings) -> list[NodeStatus]:
    response = _call(
        settings, "listing the SuperLink's nodes", lambda c: c.ListNodes(ListNodesRequest())
    )
    return [
        NodeStatus(
            node_id=int(n.node_id),
            name=str(n.name),
            public_key=_text(n.public_key),
            status=str(n.status),
            last_activated_at=str(n.last_activated_at),
            last_deactivated_at=str(n.last_deactivated_at),
            online_until=float(n.online_until),
            heartbeat_interval=float(n.heartbeat_interval),
        )
        for n in response.nodes_info
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def register_node(settings: Settings, public_key_pem: str, name: str) -> int:
    response = _call(
        settings,
        f"registering node {name!r}",
        lambda c: c.RegisterNode(
            RegisterNodeRequest(public_key=public_key_pem.encode(), name=name)
        ),
    )
    return int(response.node_id)


def unregister_node(settings: Settings, node_id: int) -> None:
    _call(
        settings,
        f"unregistering node {node_id}",
        lambda c: c.UnregisterNode(UnregisterNodeRequest(node_id=node_id)),
    )


def run_status(settings: Settings, flwr_run_id: int) -> tuple[str, str, str]:
    """(status, sub_status, details) of a Flower run: starting|running|finished, completed|..."""
    response = _call(
        settings,
        f"reading Flower run {flwr_run_id}",
        lambda c: c.ListRuns(ListRunsRequest(run_id=flwr_run_id)),
    )
    run = response.run_dict[flwr_run_id]
    return str(run.status.status), str(run.status.sub_status), str(run.status.details)


def stop_run(settings: Settings, flwr_run_id: int) -> None:
    _call(
        settings,
        f"stopping Flower run {flwr_run_id}",
        lambda c: c.StopRun(StopRunRequest(run_id=flwr_run_id)),
    )
