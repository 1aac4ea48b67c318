"""What the coordinator tells about a site's node, and how a deployment run waits for nodes:
the pure logic, on node lists as the SuperLink's Control API answers them and on its log."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from fedvla.core.models import Site, SiteStatus
from fedvla.engine.federation.reporter import JsonLinesReporter
from fedvla.orchestration.deployment.experiment_grid import ExperimentGrid
from fedvla.orchestration.deployment.federation import DeploymentError, NodeWait
from fedvla.sites import node_registry
from fedvla.sites.keys import generate_node_keys
from fedvla.sites.superlink import NodeStatus, SuperLinkError


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("keys")
    return [generate_node_keys(root / str(i)).public_pem.read_text() for i in range(3)]


def _site(name: str, key: str | None, status: SiteStatus = SiteStatus.approved) -> Site:
    features = {"state_dim": 6, "action_dim": 6, "fps": 30}
    return Site(name=name, dataset="d", features=features, public_key=key, status=status)


def _node(node_id: int, key: str, status: str, online_until: float = 0.0) -> NodeStatus:
    return NodeStatus(
        node_id=node_id,
        name="",
        public_key=key,
        status=status,
        last_activated_at="2026-11-28T10:00:00+00:00",
        last_deactivated_at="",
        online_until=online_until,
        heartbeat_interval=30.0,
    )


def test_node_state_tells_a_retired_key_from_one_not_synced_yet(keys: list[str]) -> None:
    retired = [_node(11, keys[0], "unregistered")]
    assert node_registry.node_state(_site("a", keys[0]), retired) == ("key needed", None)
    pending = _site("a", keys[0], SiteStatus.pending)
    assert node_registry.node_state(pending, retired) == ("not registered", None)
    assert node_registry.node_state(_site("a", keys[1]), retired) == ("not registered", None)
    assert node_registry.node_state(_site("a", None), retired) == ("no key", None)
    # Re-keyed: the old key retired, the new one registered and online.
    nodes = [*retired, _node(12, keys[1], "online", 1e10)]
    state, node = node_registry.node_state(_site("a", keys[1]), nodes)
    assert (state, node and node.node_id) == ("online", 12)


def test_last_seen_is_the_last_heartbeat_not_the_connection(keys: list[str]) -> None:
    # online until 10:01:00 with a 30 s interval and Flower's patience of 2: heartbeat at 10:00:00
    until = datetime(2026, 11, 28, 10, 1, tzinfo=UTC).timestamp()
    node = _node(1, keys[0], "online", until)
    assert node_registry.last_heartbeat(node) == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert node_registry.last_heartbeat(_node(1, keys[0], "registered")) is None


def test_experiment_nodes_follow_the_sites_current_keys(keys: list[str]) -> None:
    nodes = [
        _node(11, keys[0], "unregistered"),
        _node(12, keys[1], "online"),
        _node(13, keys[2], "online"),
    ]
    sites = [_site("lab-a", keys[1]), _site("lab-b", None)]
    assert node_registry.nodes_of_sites(sites, nodes) == {12: "lab-a"}
    online, missing = node_registry.site_node_states(
        [_site("lab-b", keys[0]), _site("lab-a", keys[1])], nodes
    )
    assert (online, missing) == (["lab-a"], {"lab-b": "key needed"})
    # Revoked: missing at once, though the SuperLink lists its node online until its next sync.
    revoked = _site("lab-c", keys[2], SiteStatus.revoked)
    online, missing = node_registry.site_node_states([_site("lab-a", keys[1]), revoked], nodes)
    assert (online, missing) == (["lab-a"], {"lab-c": "revoked"})


# The lines flwr 1.42's SuperLink writes when a SuperNode with an unknown key tries to activate.
REFUSAL = (
    "\x1b[91mERROR \x1b[0m:     [/v1/fleet/activate-node][ApiError:2004] Attempted to register "
    "SuperNode with public key: {key!r}, exception: No SuperNode found with the given public key.\n"
    '2026-11-28T14:07:24.803Z INFO [uvicorn.access] 127.0.0.1:35172 - "POST '
    '/v1/fleet/activate-node HTTP/1.1" 412\n'
)


def test_refusals_are_read_from_the_superlink_log(keys: list[str], tmp_path: Path) -> None:
    log = "INFO : ControlServicer.ListNodes\n" + REFUSAL.format(key=keys[0].encode())
    refusals = node_registry.refusals_in_log(log)
    key = node_registry.key_of(_site("a", keys[0]))
    assert key is not None and list(refusals) == [key]
    assert refusals[key].reason == "No SuperNode found with the given public key."
    assert refusals[key].at == datetime(2026, 11, 28, 14, 7, 24, 803000, tzinfo=UTC)
    path = tmp_path / "superlink.log"
    path.write_text("x" * 100 + "\n" + log)
    assert node_registry.read_log_tail(path, len(log) + 10) == log  # whole lines only
    assert node_registry.refusals_in_log(node_registry.read_log_tail(path, len(log))) == refusals
    assert node_registry.read_log_tail(tmp_path / "none.log") == ""


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _messages(path: Path) -> list[str]:
    import json

    return [json.loads(line)["message"] for line in path.read_text().splitlines()]


def test_the_wait_for_nodes_is_reported_and_bounded(tmp_path: Path) -> None:
    clock, events = _Clock(), tmp_path / "events.jsonl"
    states = [(["lab-a"], {"lab-b": "offline", "lab-c": "key needed"})]
    wait = NodeWait(lambda: states[-1], 2, 300, JsonLinesReporter(events), clock=clock)
    assert wait.check() is False
    clock.now = 10
    assert wait.check() is False  # nothing changed: no new event
    clock.now = 301
    with pytest.raises(DeploymentError) as failed:
        wait.check()
    assert "not online after 300 s (1 of the 2 needed): missing lab-b (offline), lab-c (key " in (
        str(failed.value)
    )
    assert _messages(events) == [
        "waiting for site nodes (1 of 2 online, 0 of 300 s): online lab-a; missing "
        "lab-b (offline), lab-c (key needed)"
    ]


def test_the_wait_ends_when_enough_nodes_are_online(tmp_path: Path) -> None:
    clock, events = _Clock(), tmp_path / "events.jsonl"
    states: list[tuple[list[str], dict[str, str]]] = [([], {"lab-a": "registered"})]

    def read() -> tuple[list[str], dict[str, str]]:
        if isinstance(states[-1], Exception):
            raise states[-1]
        return states[-1]

    wait = NodeWait(read, 1, 300, JsonLinesReporter(events), clock=clock)
    assert wait.check() is False
    clock.now = 5
    states.append(SuperLinkError("down"))  # type: ignore[arg-type]
    assert wait.check() is False
    clock.now = 40
    states.append((["lab-a"], {}))
    assert wait.check() is True and wait.check() is True
    assert _messages(events)[-1] == "site nodes online after 40 s: lab-a"
    assert any(m == "cannot read the site nodes, retrying: down" for m in _messages(events))


def test_too_few_nodes_during_the_run_are_waited_for_again_bounded(tmp_path: Path) -> None:
    """Flower's sampling waits for a round's nodes without end: the worker bounds that wait."""
    clock, events = _Clock(), tmp_path / "events.jsonl"
    both = (["lab-a", "lab-b"], {})
    states: list[tuple[list[str], dict[str, str]]] = [both]
    reads: list[float] = []

    def read() -> tuple[list[str], dict[str, str]]:
        reads.append(clock.now)
        return states[-1]

    wait = NodeWait(read, 2, 300, JsonLinesReporter(events), clock=clock)
    assert wait.check() is True
    clock.now = 3
    assert wait.check() is True and reads == [0]  # read again only every RECHECK_S
    clock.now = 10
    states.append((["lab-a"], {"lab-b": "revoked"}))
    assert wait.check() is False and wait.check() is False
    clock.now = 200
    states.append(both)
    assert wait.check() is True
    clock.now = 300
    states.append((["lab-a"], {"lab-b": "offline"}))
    assert wait.check() is False
    clock.now = 601
    with pytest.raises(DeploymentError) as failed:
        wait.check()

    assert str(failed.value).startswith(
        "site nodes not online again during the run after 300 s (1 of the 2 needed): "
        "missing lab-b (offline)"
    )
    assert _messages(events) == [
        "site nodes online after 0 s: lab-a, lab-b",
        "waiting for site nodes (lost during the run; 1 of 2 online, 0 of 300 s): online lab-a; "
        "missing lab-b (revoked)",
        "site nodes online again after 190 s: lab-a, lab-b",
        "waiting for site nodes (lost during the run; 1 of 2 online, 0 of 300 s): online lab-a; "
        "missing lab-b (offline)",
    ]


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_the_experiment_grid_admits_a_re_keyed_sites_new_node_and_drops_a_revoked_one() -> None:
    from sqlalchemy.exc import OperationalError

    registered: list[dict[int, str] | Exception] = [{12: "lab-a"}]
    approved: list[set[str] | Exception] = [{"lab-a", "lab-b"}]

    def last[T](answers: list[T | Exception]) -> T:
        if isinstance(answers[-1], Exception):
            raise answers[-1]
        return answers[-1]

    grid = ExperimentGrid(
        _Grid([12, 13, 14]),  # type: ignore[arg-type]
        nodes=lambda: last(registered),
        approved=lambda: last(approved),
        refresh_s=0,
    )
    assert list(grid.get_node_ids()) == [12]
    registered.append({12: "lab-a", 14: "lab-b"})  # lab-b re-keyed and was approved again
    assert list(grid.get_node_ids()) == [12, 14]
    assert grid.node_name(14) == "lab-b"
    approved.append({"lab-a"})  # lab-b revoked: its node is still registered until the sync
    assert list(grid.get_node_ids()) == [12]
    registered.append({12: "lab-a"})  # the sync unregistered it
    assert grid.node_name(14) == "lab-b"  # its failures of this run still carry its name
    registered.append(SuperLinkError("down"))
    approved.append(OperationalError("select", {}, Exception("database away")))
    assert list(grid.get_node_ids()) == [12]  # the last answers stand


def test_the_site_page_says_key_needed_and_why_the_node_was_refused() -> None:
    from bs4 import BeautifulSoup

    from fedvla.sites.superlink_admin import HINTS, SiteNode
    from fedvla.web.pages.templating import templates

    node = SiteNode(
        site_id=1,
        superlink="fl.example.org:9092",
        registered=False,
        status="key needed",
        online=False,
        hint=HINTS["key needed"],
        refused="No SuperNode found with the given public key.",
        refused_at=datetime(2026, 11, 28, 14, 7, 24, tzinfo=UTC),
    )
    html = templates.env.get_template("_site_node.html").render(node=node, error=None, site_id=1)
    text = " ".join(BeautifulSoup(html, "html.parser").get_text().split())
    assert "Node: key needed on fl.example.org:9092" in text
    assert "fedvla site keygen --force" in text
    assert (
        "The SuperLink refused this site's node at 2026-11-28 14:07:24+00:00: "
        "No SuperNode found with the given public key." in text
    )
