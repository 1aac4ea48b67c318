"""A deployment-mode run: the federation started on our SuperLink, followed to its end.

What ``flwr run`` does, done directly: build a Flower App Bundle (FAB) whose pyproject names our
ServerApp (fedvla.orchestration.deployment.server_app, which reports into the database) and
ClientApp, whose config is the run's frozen FederationConfig plus our run id; StartRun on the
Control API; then poll the run's status. The FAB holds no code: the SuperLink and the sites run the
installed fedvla (the SuperLink has runtime dependency installation disabled).
"""

import hashlib
import logging
import signal
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import Any

import tomli_w
from flwr.cli.build import build_fab_from_files
from flwr.common.serde import fab_to_proto
from flwr.proto.control_pb2 import StartRunRequest
from flwr.supercore.fab import Fab
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from fedvla.core.config import Settings
from fedvla.core.db import make_engine
from fedvla.core.experiment_config import FederationConfig
from fedvla.engine.federation.reporter import Reporter
from fedvla.engine.federation.run_config import run_config_from_federation_config
from fedvla.orchestration.deployment.experiment_grid import experiment_sites
from fedvla.orchestration.deployment.server_app import RUN_ID_KEY
from fedvla.sites import node_registry
from fedvla.sites.superlink import (
    SuperLinkError,
    _call,
    list_nodes,
    run_status,
    stop_run,
)

POLL_S = 1.0
APP_NAME = "fedvla-deployment"
WAIT_REPORT_S = 30.0
"""While waiting for site nodes, an event at least this often (and whenever one comes or goes)."""
RECHECK_S = 5.0
"""Once enough site nodes are online, how often they are read again while the run goes on."""


class DeploymentError(RuntimeError):
    """The SuperLink refused the run, or the run failed there."""


def _fedvla_version() -> str:
    try:
        return version("fedvla")
    except PackageNotFoundError:
        return "0.0.0"


def app_bundle(config: FederationConfig, run_id: int) -> bytes:
    """The FAB of one run: pyproject only, the run's config as the app's config."""
    app_config: dict[str, Any] = {
        **run_config_from_federation_config(config),
        RUN_ID_KEY: run_id,
    }
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": _fedvla_version(),
            "description": "fedvla's federation on a SuperLink (code: the installed fedvla)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "fedvla",
                    "components": {
                        "serverapp": "fedvla.orchestration.deployment.server_app:app",
                        "clientapp": "fedvla.engine.federation.client_app:app",
                    },
                    "config": app_config,
                }
            }
        },
    }
    fab, _ = build_fab_from_files({"pyproject.toml": tomli_w.dumps(pyproject).encode()})
    return fab


def start_run(settings: Settings, config: FederationConfig, run_id: int) -> int:
    """The Flower run id of the federation now started on the SuperLink."""
    data = app_bundle(config, run_id)
    fab = Fab(hashlib.sha256(data).hexdigest(), data, {})
    response = _call(
        settings,
        "starting the federation on the SuperLink",
        lambda c: c.StartRun(StartRunRequest(fab=fab_to_proto(fab))),
    )
    if not response.HasField("run_id"):
        raise DeploymentError("the SuperLink did not start the run")
    return int(response.run_id)


NodeStates = Callable[[], tuple[list[str], dict[str, str]]]
"""Reads the experiment's sites' nodes: names online, and the others' states by name."""


class NodeWait:
    """Waits, bounded, until ``needed`` of the experiment's site nodes are online, with events,
    before the run's first round and whenever too few are left during the run.

    ``check`` is called every poll: True while enough are online (then it reads the nodes only
    every RECHECK_S); DeploymentError naming the missing sites once ``timeout_s`` has passed
    with too few. Flower's sampling would wait for a round's nodes without end, the worker held
    meanwhile: when sites drop out (lost, or revoked) mid-run and fewer than ``needed`` remain,
    the same bounded wait starts again and, past it, fails the run, whose checkpoints stay.
    """

    def __init__(
        self,
        states: NodeStates,
        needed: int,
        timeout_s: float,
        reporter: Reporter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.states = states
        self.needed = needed
        self.timeout_s = timeout_s
        self.reporter = reporter
        self.clock = clock
        self.started = clock()
        self.done = False
        self.lost_mid_run = False
        self._read_at = self.started
        self._last: tuple[list[str], dict[str, str]] | None = None
        self._reported_at = -WAIT_REPORT_S

    def check(self) -> bool:
        now = self.clock()
        if self.done and now - self._read_at < RECHECK_S:
            return True
        self._read_at = now
        try:
            online, missing = self.states()
        except (SuperLinkError, SQLAlchemyError) as error:
            online, missing = self._last or ([], {})
            self.reporter.log(f"cannot read the site nodes, retrying: {error}")
        if len(online) >= self.needed:
            if not self.done:
                waited = now - self.started
                again = "again " if self.lost_mid_run else ""
                self.reporter.log(
                    f"site nodes online {again}after {waited:.0f} s: {', '.join(online)}"
                )
            self.done = True
            self._last = (online, missing)
            return True
        if self.done:  # enough were online: the run lost some
            self.done, self.lost_mid_run, self.started = False, True, now
            self._reported_at = -WAIT_REPORT_S
        waited = now - self.started
        when = "online again during the run" if self.lost_mid_run else "online"
        if waited > self.timeout_s:
            raise DeploymentError(
                f"site nodes not {when} after {self.timeout_s:g} s "
                f"({len(online)} of the {self.needed} needed): missing "
                + _states(missing)
                + " (FEDVLA_NODE_WAIT_S bounds the wait)"
            )
        if (online, missing) != self._last or now - self._reported_at >= WAIT_REPORT_S:
            lost = "lost during the run; " if self.lost_mid_run else ""
            self.reporter.log(
                f"waiting for site nodes ({lost}{len(online)} of {self.needed} online, "
                f"{waited:.0f} of {self.timeout_s:g} s): "
                + (f"online {', '.join(online)}; " if online else "")
                + "missing "
                + _states(missing)
            )
            self._reported_at = now
        self._last = (online, missing)
        return False


def _states(missing: dict[str, str]) -> str:
    return ", ".join(f"{name} ({state})" for name, state in missing.items()) or "none"


def site_node_states(settings: Settings, config: FederationConfig) -> NodeStates:
    """The experiment's sites' nodes, read again at each call (a site may re-key meanwhile)."""

    def read() -> tuple[list[str], dict[str, str]]:
        sites = experiment_sites(settings, config.site_ids)
        return node_registry.site_node_states(sites, list_nodes(settings))

    return read


def run_on_superlink(
    settings: Settings, run_id: int, config: FederationConfig, reporter: Reporter
) -> None:
    """Registers the approved sites' keys, starts the federation, waits for its end.

    The ServerApp reports rounds and checkpoints itself; here only the start, the wait for the
    site nodes (at most settings.node_wait_s, then the Flower run is stopped and the run fails
    naming the missing sites) and the outcome. SIGTERM (a cancel) stops the Flower run before
    this returns.
    """
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per status poll otherwise
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            sync = node_registry.sync_registrations(session, settings)
    finally:
        engine.dispose()
    if sync.registered or sync.unregistered:
        reporter.log(
            f"SuperLink nodes: registered {sync.registered or 'none'}, "
            f"unregistered {sync.unregistered or 'none'}"
        )
    for name in sync.needs_new_key:
        reporter.log(f"site {name!r} needs a new key pair: its key was unregistered before")
    flwr_run_id = start_run(settings, config, run_id)
    reporter.log(
        f"federation started on the SuperLink at {settings.superlink_address} "
        f"(Flower run {flwr_run_id}); waiting for {config.min_clients} site node(s)"
    )
    wait = NodeWait(
        site_node_states(settings, config), config.min_clients, settings.node_wait_s, reporter
    )
    stopping: list[int] = []

    def on_term(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            if stopping:
                stop_run(settings, flwr_run_id)
                raise DeploymentError(f"cancelled: Flower run {flwr_run_id} stopped")
            try:
                wait.check()
            except DeploymentError:
                stop_run(settings, flwr_run_id)
                raise
            try:
                status, sub_status, details = run_status(settings, flwr_run_id)
            except SuperLinkError as error:
                reporter.log(f"SuperLink unreachable, retrying: {error}")
                time.sleep(POLL_S * 5)
                continue
            if status == "finished":
                if sub_status != "completed":
                    raise DeploymentError(
                        f"Flower run {flwr_run_id} {sub_status}: "
                        + (details or "see the SuperLink log")
                    )
                return
            time.sleep(POLL_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
