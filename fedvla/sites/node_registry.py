"""The SuperLink admits exactly the approved sites: their public keys registered, others not.

Sites and nodes are matched by public key (the SuperLink stores the PEM we registered), so no
node id needs storing: a re-keyed site's old node is unregistered, its new key registered once
it is approved again. Also what the coordinator can tell about a site's node from the
SuperLink's node list and log: its state, its last heartbeat, why the SuperLink refused it.
"""

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, select

from fedvla.core.config import Settings
from fedvla.core.models import Site, SiteStatus
from fedvla.core.public_keys import InvalidPublicKey, normalise_public_key
from fedvla.sites.superlink import (
    NodeStatus,
    list_nodes,
    register_node,
    unregister_node,
)

UNREGISTERED = "unregistered"
KEY_NEEDED = "key needed"
NOT_REGISTERED = "not registered"
NO_KEY = "no key"
HEARTBEAT_PATIENCE = 2
"""flwr 1.42's (flwr.common.constant): a node is online until patience x interval after its
last heartbeat, so that heartbeat is online_until less that much."""
HEARTBEAT_DEFAULT_INTERVAL_S = 30.0
LOG_TAIL_BYTES = 1 << 20


@dataclass
class SyncResult:
    registered: list[str] = field(default_factory=list)
    unregistered: list[int] = field(default_factory=list)
    needs_new_key: list[str] = field(default_factory=list)
    """Approved sites whose key was unregistered once: Flower never admits such a key again."""


def _key(pem: str) -> str | None:
    try:
        return normalise_public_key(pem)
    except InvalidPublicKey:
        return None


def live_nodes_by_key(settings: Settings) -> dict[str, NodeStatus]:
    """The SuperLink's registered nodes (not unregistered ones), by normalised public key."""
    found: dict[str, NodeStatus] = {}
    for node in list_nodes(settings):
        key = _key(node.public_key)
        if key is not None and node.status != UNREGISTERED:
            found[key] = node
    return found


def approved_sites_by_key(session: Session) -> dict[str, Site]:
    query = select(Site).where(Site.status == SiteStatus.approved)
    sites = {}
    for site in session.exec(query):
        key = _key(site.public_key or "")
        if key is not None:
            sites[key] = site
    return sites


def sync_registrations(session: Session, settings: Settings) -> SyncResult:
    """Register approved sites' keys, unregister every other node (revoked, re-keyed, unknown)."""
    result = SyncResult()
    nodes = live_nodes_by_key(settings)
    retired = {_key(n.public_key) for n in list_nodes(settings) if n.status == UNREGISTERED}
    wanted = approved_sites_by_key(session)
    for key, site in wanted.items():
        if key in retired and key not in nodes:
            result.needs_new_key.append(site.name)
        elif key not in nodes:
            register_node(settings, key, site.name)
            result.registered.append(site.name)
    for key, node in nodes.items():
        if key not in wanted:
            unregister_node(settings, node.node_id)
            result.unregistered.append(node.node_id)
    return result


def key_of(site: Site) -> str | None:
    return _key(site.public_key or "")


def node_state(site: Site, nodes: Iterable[NodeStatus]) -> tuple[str, NodeStatus | None]:
    """The site's node state and its node: online | offline | registered (the SuperLink's
    states of a registered key), key needed (approved, but its key was unregistered once:
    Flower never admits it again), not registered (not approved, or not synced yet), no key."""
    key = key_of(site)
    if key is None:
        return NO_KEY, None
    nodes = [node for node in nodes if _key(node.public_key) == key]
    live = next((node for node in nodes if node.status != UNREGISTERED), None)
    if live is not None:
        return live.status, live
    if nodes and site.status == SiteStatus.approved:
        return KEY_NEEDED, None
    return NOT_REGISTERED, None


def site_node_states(
    sites: Iterable[Site], nodes: Iterable[NodeStatus]
) -> tuple[list[str], dict[str, str]]:
    """The names of the approved sites whose node is online, and the others' node states (or,
    for a site no longer approved whose node is still online until the SuperLink's next key
    sync, its status), by name: a run's ServerApp sends nothing to a site not approved."""
    nodes = list(nodes)
    online, missing = [], {}
    for site in sorted(sites, key=lambda s: s.name):
        state, _ = node_state(site, nodes)
        if state == "online" and site.status != SiteStatus.approved:
            missing[site.name] = str(site.status)
        elif state == "online":
            online.append(site.name)
        else:
            missing[site.name] = state
    return online, missing


def last_heartbeat(node: NodeStatus) -> datetime | None:
    """When the node last sent a heartbeat (None if it never did)."""
    if node.online_until <= 0:
        return None
    interval = node.heartbeat_interval or HEARTBEAT_DEFAULT_INTERVAL_S
    return datetime.fromtimestamp(node.online_until - HEARTBEAT_PATIENCE * interval, UTC)


def nodes_of_sites(sites: Iterable[Site], nodes: Iterable[NodeStatus]) -> dict[int, str]:
    """Node id -> site name, for the sites' registered (not unregistered) nodes."""
    names = {key: site.name for site in sites if (key := key_of(site)) is not None}
    return {
        node.node_id: names[key]
        for node in nodes
        if node.status != UNREGISTERED and (key := _key(node.public_key)) in names
    }


@dataclass(frozen=True)
class Refusal:
    """A node the SuperLink refused, as its log says."""

    reason: str
    at: datetime | None


_REFUSED = re.compile(
    r"\[/v1/fleet/(?P<route>[a-z-]+)\]\[ApiError:\d+\] Attempted to register SuperNode with "
    r"public key: (?P<key>b'[^']*'), exception: (?P<reason>.*)$"
)
_ACCESS = re.compile(r"^(?P<at>\d{4}-\d\d-\d\dT[\d:.]+Z) .*\"POST /v1/fleet/")


def refusals_in_log(text: str) -> dict[str, Refusal]:
    """The last refusal of each public key (normalised) in a SuperLink log.

    flwr 1.42 logs a node it does not admit (activation of an unknown or unregistered key) with
    the key; the time is that of the next Fleet access line. A request refused before that (bad
    signature, clock skew: HTTP 401) is logged without the key and cannot be told apart.
    """
    found: dict[str, Refusal] = {}
    pending: list[tuple[str, str]] = []
    for line in text.splitlines():
        if match := _REFUSED.search(line):
            try:
                pem = ast.literal_eval(match["key"]).decode()
            except (ValueError, SyntaxError, UnicodeDecodeError):
                continue
            if (key := _key(pem)) is not None:
                pending.append((key, match["reason"].strip()))
                found[key] = Refusal(match["reason"].strip(), None)
        elif pending and (access := _ACCESS.match(line)):
            at = datetime.fromisoformat(access["at"])
            for key, reason in pending:
                found[key] = Refusal(reason, at)
            pending = []
    return found


def read_log_tail(path: Path, size: int = LOG_TAIL_BYTES) -> str:
    """The whole lines in the last ``size`` bytes of a log ("" when there is none)."""
    try:
        with path.open("rb") as log:
            log.seek(0, 2)
            start = max(0, log.tell() - size)
            log.seek(start)
            tail = log.read()
    except OSError:
        return ""
    if start > 0:
        tail = tail.partition(b"\n")[2]
    return tail.decode(errors="replace")
